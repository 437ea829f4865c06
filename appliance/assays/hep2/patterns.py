"""The HEp-2 pattern table: class names, ICAP codes, and what a metaphase shows in each.

One table, used by the generator, the classifier's class list, the specimen rules and the
report: a lab that retrains on its own data maps its folder names here (``ALIASES``).
ICAP nomenclature: anapatterns.org (Chan et al. 2015, 2021). The metaphase column is what
separates look-alikes: in AC-1 the metaphase chromatin mass stains intensely and evenly, in
AC-4/AC-5 it does not stain, in AC-2 it is strongly speckled, in AC-3 the centromere
speckles line up on the chromatin (reference/hep2-patterns.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    """One cell-level pattern class."""

    name: str  # the class name used everywhere in code, JSON and models
    icap: str  # ICAP code, e.g. "AC-1"
    label: str  # words for the pathologist
    compartment: str  # "none" | "nuclear" | "cytoplasmic"
    metaphase: str  # the metaphase chromatin plate: stained | speckled | dots | unstained

    @property
    def region(self) -> str:
        """Where in the cell it stains: none | nucleoplasm | nucleolus | envelope | cytoplasm.

        Two patterns of different regions can show in the same cell (a mixed pattern such
        as AC-1 + AC-15); two of the same region cannot.
        """
        if self.compartment != "nuclear":
            return "cytoplasm" if self.compartment == "cytoplasmic" else "none"
        if self.name.startswith("nucleolar"):
            return "nucleolus"
        if self.name.startswith("envelope"):
            return "envelope"
        return "nucleoplasm"


PATTERNS: tuple[Pattern, ...] = (
    Pattern("negative", "AC-0", "negative", "none", "unstained"),
    Pattern("homogeneous", "AC-1", "nuclear homogeneous", "nuclear", "stained"),
    Pattern("dense_fine_speckled", "AC-2", "nuclear dense fine speckled", "nuclear", "speckled"),
    Pattern("centromere", "AC-3", "centromere", "nuclear", "dots"),
    Pattern("fine_speckled", "AC-4", "nuclear fine speckled", "nuclear", "unstained"),
    Pattern("coarse_speckled", "AC-5", "nuclear large/coarse speckled", "nuclear", "unstained"),
    Pattern("multiple_nuclear_dots", "AC-6", "multiple nuclear dots", "nuclear", "unstained"),
    Pattern("few_nuclear_dots", "AC-7", "few nuclear dots", "nuclear", "unstained"),
    Pattern("nucleolar_homogeneous", "AC-8", "homogeneous nucleolar", "nuclear", "unstained"),
    Pattern("nucleolar_clumpy", "AC-9", "clumpy nucleolar", "nuclear", "unstained"),
    Pattern("nucleolar_punctate", "AC-10", "punctate nucleolar", "nuclear", "unstained"),
    Pattern("envelope_smooth", "AC-11", "smooth nuclear envelope", "nuclear", "unstained"),
    Pattern("envelope_punctate", "AC-12", "punctate nuclear envelope", "nuclear", "unstained"),
    Pattern("cyto_fibrillar", "AC-15", "cytoplasmic fibrillar linear (actin-like)",
            "cytoplasmic", "unstained"),
    Pattern("cyto_speckled", "AC-20", "cytoplasmic fine speckled", "cytoplasmic", "unstained"),
    Pattern("cyto_reticular", "AC-21", "cytoplasmic reticular (mitochondrial-like)",
            "cytoplasmic", "unstained"),
    Pattern("golgi", "AC-22", "cytoplasmic polar (Golgi-like)", "cytoplasmic", "unstained"),
)

BY_NAME: dict[str, Pattern] = {p.name: p for p in PATTERNS}
NAMES: tuple[str, ...] = tuple(p.name for p in PATTERNS)
# The stained regions of a cell, in the order of the classifier's region head (a model
# from hep2-cells-v6 on says, region by region, whether it stains: two patterns of
# different regions in one cell are two regions stained).
REGIONS: tuple[str, ...] = ("nucleoplasm", "nucleolus", "envelope", "cytoplasm")

# ICAP competent-level groups whose members this table tells apart (the expert level).
# Reporting at the group level is accepted practice where the subtype is unsure (ICAP,
# anapatterns.org; Van Hoovels et al. 2020, Auto Immun Highlights 11:17, table 2).
SUBTYPE_GROUPS: dict[str, tuple[str, ...]] = {
    "nuclear speckled (AC-2,4,5)": ("dense_fine_speckled", "fine_speckled", "coarse_speckled"),
    "discrete nuclear dots (AC-6,7)": ("multiple_nuclear_dots", "few_nuclear_dots"),
    "nucleolar (AC-8,9,10)": ("nucleolar_homogeneous", "nucleolar_clumpy",
                              "nucleolar_punctate"),
    "nuclear envelope (AC-11,12)": ("envelope_smooth", "envelope_punctate"),
}


def subtype_group(name: str) -> str | None:
    """The competent-level group a class is an expert-level subtype of, or None."""
    return next((g for g, members in SUBTYPE_GROUPS.items() if name in members), None)

# Folder / label names of public and lab datasets mapped to ours (case-insensitive).
# ICPR 2012 (MIVIA) and ICPR 2014 (I3A) use these; "speckled" without more is AC-2/4/5 in
# ICAP terms, and the 2014 set means the fine kind, so it maps to AC-4.
ALIASES: dict[str, str] = {
    "homogeneous": "homogeneous", "speckled": "fine_speckled",
    "fine speckled": "fine_speckled", "fine_speckled": "fine_speckled",
    "coarse speckled": "coarse_speckled", "coarse_speckled": "coarse_speckled",
    "nucleolar": "nucleolar_homogeneous", "centromere": "centromere",
    "golgi": "golgi", "nuclearmembrane": "envelope_smooth", "nuclear membrane": "envelope_smooth",
    "numem": "envelope_smooth", "cytoplasmatic": "cyto_fibrillar", "cytoplasmic": "cyto_fibrillar",
    "negative": "negative", "dense fine speckled": "dense_fine_speckled",
    "nuclear dots": "multiple_nuclear_dots",
}
# Classes not drawn honestly enough to generate: the mitotic-only patterns (AC-24..28) need
# the mitotic spindle apparatus, and AC-13/14/16/17/18/19/23/29 need cell-cycle or
# sub-cellular structures the generator does not model. A lab's own data may add them.


def pattern(name: str) -> Pattern:
    """The pattern of a class name; ValueError naming the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown HEp-2 pattern {name!r}; known: {', '.join(NAMES)}") from None


def canonical(label: str) -> str:
    """Our class name for a dataset's label (exact names pass through); ValueError if none.

    A label may be a name, an alias (``ALIASES``) or the ICAP code of a class in the
    table (``AC-3``, ``ac 3``, ``AC3``).
    """
    if label in BY_NAME:
        return label
    key = " ".join(label.strip().lower().replace("-", " ").replace("_", " ").split())
    code = key.replace(" ", "")
    for p in PATTERNS:
        if code == p.icap.lower().replace("-", ""):
            return p.name
    for alias, name in ALIASES.items():
        if key == " ".join(alias.replace("_", " ").split()):
            return name
    raise ValueError(f"no HEp-2 class for the label {label!r}: add it to "
                     "appliance.assays.hep2.patterns.ALIASES or rename the folder to one of "
                     f"{', '.join(NAMES)}")
