"""Endpoint titres from a titration: the serum's wells at rising dilutions, each pooled.

A lab screens a serum at one dilution (1:80 or 1:160) and, when it is positive, titrates
it: the same serum at 1:160, 1:320, 1:640 ... The endpoint titre is the highest dilution
at which the staining still shows. ICAP reports the pattern(s) with their endpoint titre
or intensity, a mixed serum with a titre for each pattern where they differ (Chan et al.
2015, 2021). The box reads each dilution's well as it reads any well (``well.call_well``)
and gives each pattern of the screening well (the lowest dilution):

- its titre: the highest dilution of the unbroken run of wells, from the screening one
  up, that reads positive and reports the pattern or a look-alike subtype of it (a
  diluted AC-4 may read as AC-2 in a few cells; the subtype is the screening well's);
- whether the endpoint was reached: a higher dilution was read and no longer shows it.
  When the highest dilution read still shows it, or the next well could not be scored,
  the titre is a lower bound ("1:640 or higher").

Pure: it reads the wells' calls only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.assays.hep2.specimen import look_alikes, too_coarse_for_subtypes
from appliance.assays.hep2.well import Hep2WellResult
from appliance.config import Hep2SpecimenConfig


@dataclass(frozen=True)
class Titre:
    """One pattern's endpoint titre."""

    name: str
    icap: str
    label: str
    dilution: int  # 320 for 1:320: the highest dilution still showing the pattern
    endpoint: bool  # False: a lower bound (the next dilution was not read, or not scorable)
    why: str  # how it ended, in words

    def words(self) -> str:
        """``1:320``, or ``1:640 or higher`` for a lower bound."""
        return f"1:{self.dilution}" + ("" if self.endpoint else " or higher")


def _shows(well: Hep2WellResult, name: str, cfg: Hep2SpecimenConfig) -> bool:
    coarse = too_coarse_for_subtypes(well.um_per_px, cfg)
    return bool(well.scored and well.positive and any(
        p.name == name or look_alikes(p.name, name, coarse=coarse) for p in well.patterns))


def endpoint_titres(wells: Sequence[tuple[int, Hep2WellResult]], cfg: Hep2SpecimenConfig
                    ) -> tuple[Titre, ...]:
    """The titre of each pattern of the screening well (the lowest dilution); empty when
    that well is not scorable or negative. ``wells``: (dilution, the well's call)."""
    series = sorted(wells, key=lambda w: w[0])
    if not series:
        return ()
    screening_dilution, screening = series[0]
    if not (screening.scored and screening.positive):
        return ()
    out = []
    for p in screening.patterns:
        last, why, endpoint = screening_dilution, "", False
        for dilution, well in series[1:]:
            if not well.scored:
                why = f"the 1:{dilution} well could not be scored ({well.reason})"
                break
            if not _shows(well, p.name, cfg):
                why = f"not shown at 1:{dilution}"
                endpoint = True
                break
            last = dilution
        else:
            why = f"still shown at 1:{last}, the highest dilution read"
        out.append(Titre(p.name, p.icap, p.label, last, endpoint, why))
    return tuple(out)
