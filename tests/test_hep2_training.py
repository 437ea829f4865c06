"""HEp-2 classifier tooling: a lab's datasets, a training smoke run, the shipped model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from appliance.assays.hep2.patterns import NAMES, REGIONS
from appliance.config import Hep2CellsConfig
from appliance.inference.manifest import file_sha256, load_manifest, verify_model
from tools.hep2_dataset import (
    MIXED_WEIGHT,
    WEAK_WEIGHT,
    CropSet,
    concat,
    field_crops,
    folder_crops,
    perturb_mask,
    read_specimen_csv,
)

CFG = Hep2CellsConfig()
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "hep2"


def speckled_cell(rng: np.random.Generator, size: int = 70, dots: int = 12) -> np.ndarray:
    """A grey single-cell crop: a dim disk with bright dots on a dark background (uint8)."""
    img = np.full((size, size), 12, np.uint8)
    c = size // 2
    cv2.circle(img, (c, c), size // 3, 60, thickness=-1)
    for _ in range(dots):
        x, y = (int(v) for v in c + rng.integers(-size // 5, size // 5, size=2))
        cv2.circle(img, (x, y), 2, 220, thickness=-1)
    return img


def ringed_cell(size: int = 70) -> np.ndarray:
    """A grey crop with a bright nuclear rim (envelope-like)."""
    img = np.full((size, size), 12, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 3, 40, thickness=-1)
    cv2.circle(img, (size // 2, size // 2), size // 3, 230, thickness=3)
    return img


def make_tree(root: Path, rng: np.random.Generator, per_class: int = 6) -> None:
    """An ICPR-2014-like tree: 'NuMem' (an alias) as grey PNG, 'Speckled' as RGB TIFF."""
    (root / "NuMem").mkdir(parents=True)
    (root / "Speckled").mkdir()
    for i in range(per_class):
        cv2.imwrite(str(root / "NuMem" / f"{i:03d}.png"), ringed_cell(60 + i))
        grey = speckled_cell(rng, 64 + i)
        rgb = np.stack([grey // 8, grey, grey // 8], axis=-1)  # BGR order: green in the middle
        cv2.imwrite(str(root / "Speckled" / f"{i:03d}.tif"), rgb)


def test_folder_tree_with_aliases(tmp_path: Path) -> None:
    make_tree(tmp_path, np.random.default_rng(0))
    data = folder_crops(tmp_path, CFG)
    assert len(data) == 12
    assert data.crops.shape == (12, 2, CFG.crop_px, CFG.crop_px)
    names = sorted({NAMES[i] for i in data.pattern})
    assert names == ["envelope_smooth", "fine_speckled"]
    assert np.all(data.mitosis == -1)  # a lab's crops say nothing about mitosis
    # The mask channel marks the cell, not the whole crop, and the signal is normalised.
    assert 0.15 < data.crops[:, 1].mean() < 0.9
    assert data.crops[:, 0].max() <= 1.5


def test_unknown_class_folder_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path, np.random.default_rng(0), per_class=1)
    (tmp_path / "Blobby").mkdir()
    with pytest.raises(ValueError, match="Blobby"):
        folder_crops(tmp_path, CFG)


def test_empty_or_missing_tree_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dataset folder"):
        folder_crops(tmp_path / "nope", CFG)
    (tmp_path / "golgi").mkdir()
    with pytest.raises(ValueError, match="no images"):
        folder_crops(tmp_path, CFG)


def test_companion_mask_is_used(tmp_path: Path) -> None:
    (tmp_path / "homogeneous").mkdir()
    img = np.full((64, 64), 90, np.uint8)  # flat: thresholding would find nothing
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    cv2.imwrite(str(tmp_path / "homogeneous" / "a.png"), img)
    cv2.imwrite(str(tmp_path / "homogeneous" / "a_Mask.png"), mask)
    data = folder_crops(tmp_path, CFG)
    assert len(data) == 1  # the mask file is not a sample
    # Without a scale the mask's size gives it: a 20 µm cell, whose square is
    # 20 * sqrt(pi) / 2 µm a side, in the 32 µm crop.
    side_um = 20.0 * np.sqrt(np.pi) / 2.0
    assert data.crops[0, 1].mean() == pytest.approx((side_um / CFG.crop_um) ** 2, abs=0.02)
    # With the images' scale the mask keeps its true size: 32 px at 0.5 µm/px is 16 µm.
    scaled = folder_crops(tmp_path, CFG, um_per_px=0.5)
    assert scaled.crops[0, 1].mean() == pytest.approx((16.0 / CFG.crop_um) ** 2, abs=0.02)


def test_mask_perturbation_is_small_and_seeded() -> None:
    mask = np.zeros((80, 80), bool)
    cv2.circle(mask.view(np.uint8), (40, 40), 20, 1, thickness=-1)
    a = perturb_mask(mask, 0.5, np.random.default_rng(3))
    b = perturb_mask(mask, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    changes = [np.mean(perturb_mask(mask, 0.5, np.random.default_rng(s)) != mask)
               for s in range(10)]
    assert max(changes) > 0  # it does perturb
    assert max(changes) < 0.12  # by about a micrometre at most


def test_specimen_csv_and_weak_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    field = np.full((120, 160), 10, np.uint8)
    for x in (40, 110):
        field[30:100, x - 30:x + 30] = np.maximum(field[30:100, x - 30:x + 30],
                                                  speckled_cell(rng, 70)[:, 5:65])
    cv2.imwrite(str(tmp_path / "f1.png"), field)
    cv2.imwrite(str(tmp_path / "f2.png"), field)
    (tmp_path / "labels.csv").write_text("file,pattern,pattern2\nf1.png,Speckled\n"
                                         "f2.png,homogeneous,NuMem\n")

    def two_blobs(green: np.ndarray, um_per_px: float) -> np.ndarray:
        labels = np.zeros(green.shape, np.int32)
        labels[40:90, 20:60] = 1
        labels[40:90, 90:130] = 2
        return labels

    data = field_crops(tmp_path / "labels.csv", 0.5, CFG, segment=two_blobs)
    assert len(data) == 4
    assert [NAMES[i] for i in data.pattern] == ["fine_speckled"] * 2 + ["homogeneous"] * 2
    np.testing.assert_allclose(data.weight, [WEAK_WEIGHT] * 2 + [MIXED_WEIGHT] * 2)
    assert np.all(data.mitosis == -1)


def test_fields_without_a_scale_are_cut_at_the_scale_of_their_cells(tmp_path: Path) -> None:
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    scales = {}
    for name, um in (("near.png", 0.3), ("far.png", 0.8)):
        f = generate_hep2_field(Hep2FieldSpec(seed=72_200, width=480, height=360, um_per_px=um,
                                              patterns=(("homogeneous", 1.0),), intensity=120.0))
        cv2.imwrite(str(tmp_path / name), f.image[..., 1])
        scales[name] = um
    (tmp_path / "labels.csv").write_text("near.png,AC-1\nfar.png,AC-1\n")
    seen: list[float] = []

    def spy(green: np.ndarray, um_per_px: float) -> np.ndarray:
        seen.append(um_per_px)
        return np.zeros(green.shape, np.int32)

    field_crops(tmp_path / "labels.csv", None, CFG, segment=spy)
    # Estimated field by field, as the box does (scale.py), not one default for all.
    assert seen[0] == pytest.approx(0.3, rel=0.25) and seen[1] == pytest.approx(0.8, rel=0.25)
    assert 2.0 < seen[1] / seen[0] < 3.4
    with pytest.raises(ValueError, match="positive"):
        field_crops(tmp_path / "labels.csv", 0.0, CFG, segment=spy)


def test_specimen_csv_with_unknown_pattern_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("a.png,homogeneous\nb.png,sparkly\n")
    with pytest.raises(ValueError, match=r"l\.csv:2"):
        read_specimen_csv(tmp_path / "l.csv")


def test_one_epoch_training_exports_a_valid_onnx(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # training only: CI and the box run without torch
    from tools.hep2_net import (
        INPUT_NAME,
        MITOSIS_OUTPUT,
        PATTERN_OUTPUT,
        REGION_OUTPUT,
        export_onnx,
    )
    from tools.train_hep2 import quantise, train_model

    make_tree(tmp_path / "cells", np.random.default_rng(2), per_class=8)
    data = folder_crops(tmp_path / "cells", CFG)
    model, losses = train_model(data, epochs=1, batch=8, width=4, show=False)
    assert len(losses) == 2 and all(np.isfinite(losses))
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32)
    int8 = tmp_path / "m_int8.onnx"
    quantise(fp32, int8, data.crops[:8])
    for path in (fp32, int8):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [INPUT_NAME]
        assert [o.name for o in sess.get_outputs()] == [PATTERN_OUTPUT, MITOSIS_OUTPUT,
                                                        REGION_OUTPUT]
        pat, mit, reg = sess.run(None, {INPUT_NAME: data.crops[:5]})  # a batch not exported
        assert pat.shape == (5, len(NAMES)) and mit.shape == (5, 3) and reg.shape == (5, 4)
        assert np.isfinite(pat).all() and np.isfinite(mit).all() and np.isfinite(reg).all()


def test_training_fit_measures_one_pattern_training_crops_only(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # train_hep2 imports it
    from tools.train_hep2 import measure, training_fit

    make_tree(tmp_path / "cells", np.random.default_rng(4), per_class=4)
    data = folder_crops(tmp_path / "cells", CFG)
    second = np.full(len(data), -1, np.int64)
    second[::3] = 0  # a third of them compound: their truth is split, so not counted
    data = CropSet(data.crops, data.pattern, data.mitosis, data.weight, second)
    model = SHIPPED / "hep2_fp32.onnx"
    fit = training_fit(model, data, count=1000)
    single = data.subset(np.flatnonzero(second < 0))
    assert fit["crops"] == len(single)
    assert fit["mean_class_accuracy"] == measure(model, single)[0]["mean_class_accuracy"]
    assert training_fit(model, data, count=5)["crops"] == 5
    assert training_fit(model, data.subset(np.flatnonzero(second >= 0)))["crops"] == 0


def test_shipped_model_matches_its_manifest() -> None:
    manifest = load_manifest(SHIPPED)
    assert manifest.assay == "hep2"
    assert manifest.classes == NAMES
    assert manifest.raw["outputs"]["mitosis_logits"]["classes"] == [
        "interphase", "mitotic_plate_stained", "mitotic_plate_unstained"]
    assert manifest.raw["outputs"]["region_logits"]["classes"] == list(REGIONS)
    assert "generated data only" in manifest.validated_on
    assert {"fp32", "int8"} <= set(manifest.files)
    for precision, (name, sha) in manifest.files.items():
        assert file_sha256(SHIPPED / name) == sha
        assert verify_model(manifest, precision) == SHIPPED / name
    metrics = manifest.raw["metrics"]
    assert 0.0 <= metrics["int8"]["mean_class_accuracy"] <= 1.0


def test_generated_crops_are_stratified_and_seeded() -> None:
    from tools.hep2_dataset import generated_crops

    classes = ("homogeneous", "centromere", "golgi")
    kwargs = {"classes": classes, "rng_seed": 5, "width": 240, "height": 180,
              "um_per_px": 0.5, "mitotic_fraction": 0.3}
    a = generated_crops(range(900, 960), 4, CFG, **kwargs)  # type: ignore[arg-type]
    b = generated_crops(range(900, 960), 4, CFG, **kwargs)  # type: ignore[arg-type]
    assert np.bincount(a.pattern, minlength=len(NAMES))[[NAMES.index(c) for c in classes]]\
        .tolist() == [4, 4, 4]
    np.testing.assert_array_equal(a.crops, b.crops)
    np.testing.assert_array_equal(a.mitosis, b.mitosis)
    assert set(a.mitosis.tolist()) <= {0, 1, 2}
    # The mask channel marks one whole cell near the centre of each crop.
    centre = a.crops[:, 1, 28:36, 28:36].mean(axis=(1, 2))
    assert np.all(centre > 0.9)


def test_camera_looks_change_the_pictures_only_when_asked() -> None:
    from tools.hep2_dataset import generated_crops, through_a_camera
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    f = generate_hep2_field(Hep2FieldSpec(seed=72_500, width=240, height=180, um_per_px=0.5,
                                          patterns=(("centromere", 1.0),), intensity=120.0))
    rng = np.random.default_rng(3)
    assert through_a_camera(f, rng, 0.0) is f
    assert rng.random() == np.random.default_rng(3).random()  # no draw was taken
    seen = [through_a_camera(f, np.random.default_rng(s), 1.0) for s in range(6)]
    assert sum(not np.array_equal(g.image, f.image) for g in seen) >= 4
    assert all(g.cells == f.cells and g.cell_labels is f.cell_labels for g in seen)
    kwargs = {"classes": ("centromere",), "rng_seed": 5, "width": 240, "height": 180,
              "um_per_px": 0.5}
    plain = generated_crops(range(900, 930), 6, CFG, **kwargs)  # type: ignore[arg-type]
    again = generated_crops(range(900, 930), 6, CFG, camera_share=0.0,
                            **kwargs)  # type: ignore[arg-type]
    looked = generated_crops(range(900, 930), 6, CFG, camera_share=1.0,
                             **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(plain.crops, again.crops)
    assert len(looked) == 6 and not np.array_equal(plain.crops, looked.crops)


def test_compound_crops_carry_both_patterns_of_different_regions() -> None:
    from tools.hep2_dataset import compound_crops, compound_pairs
    from tools.synth.hep2_fields import region_of

    pairs = compound_pairs()
    assert all(region_of(a) != region_of(b) for a, b in pairs)
    assert ("centromere", "golgi") in pairs and ("cyto_fibrillar", "golgi") not in pairs
    data = compound_crops(range(950, 960), 12, CFG, rng_seed=3, width=240, height=180,
                          um_per_px=0.5, intensity=90.0)
    assert len(data) == 12
    assert (data.seconds >= 0).all() and (data.seconds != data.pattern).all()
    assert (data.mitosis == 0).all()  # interphase only: a plate shows one pattern
    for first, second in zip(data.pattern, data.seconds, strict=True):
        assert region_of(NAMES[first]) != region_of(NAMES[second])


def test_segmented_crops_are_the_assays_own_crops_labelled_by_the_truth() -> None:
    from appliance.assays.hep2.crops import crops_for
    from appliance.assays.hep2.segmentation import segment_cells
    from tools.hep2_dataset import field_cell_crops
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    field = generate_hep2_field(Hep2FieldSpec(seed=4, width=320, height=240, um_per_px=0.5,
                                              intensity=120.0, patterns=(("golgi", 1.0),)))
    got = field_cell_crops(field, CFG, np.random.default_rng(0), segmented=True)
    assert len(got) > 0 and set(got.pattern.tolist()) == {NAMES.index("golgi")}
    green = field.image[..., 1].astype(np.float32)
    assay_crops, _ = crops_for(green, segment_cells(green, 0.5, CFG).labels, 0.5, CFG)
    # Every training crop is one the assay itself cuts from this field.
    for crop in got.crops:
        assert min(float(np.abs(crop - a).max()) for a in assay_crops) == 0.0


def test_soft_targets_split_compound_cells_and_the_loss_prefers_them() -> None:
    torch = pytest.importorskip("torch")
    from tools.train_hep2 import COMPOUND_SPLIT, pattern_loss, pattern_targets

    pattern = torch.tensor([1, 3])
    second = torch.tensor([-1, 16])
    t = pattern_targets(pattern, second, len(NAMES), smoothing=0.0)
    assert t[0, 1] == 1.0 and t[0].sum() == pytest.approx(1.0)
    assert t[1, 3] == pytest.approx(1 - COMPOUND_SPLIT)
    assert t[1, 16] == pytest.approx(COMPOUND_SPLIT)
    smooth = pattern_targets(pattern, second, len(NAMES), smoothing=0.17)
    assert torch.allclose(smooth.sum(dim=1), torch.ones(2))
    ones = torch.ones(len(NAMES))
    w = torch.ones(2)
    # For the compound cell, logits naming both patterns beat logits naming one.
    both = torch.zeros(1, len(NAMES))
    both[0, 3] = both[0, 16] = 6.0
    one = torch.zeros(1, len(NAMES))
    one[0, 3] = 6.0
    assert pattern_loss(both, t[1:], ones, w[:1]) < pattern_loss(one, t[1:], ones, w[:1])


def test_crop_cache_round_trip_keeps_seconds_and_reads_old_caches(tmp_path: Path) -> None:
    from tools.hep2_dataset import CropSet, load_cropset, save_cropset

    data = CropSet(np.zeros((3, 2, 8, 8), np.float32), np.array([1, 2, 3]),
                   np.array([0, 0, -1]), np.ones(3, np.float32), np.array([-1, 16, -1]))
    save_cropset(tmp_path / "a.npz", data)
    back = load_cropset(tmp_path / "a.npz")
    assert back.seconds.tolist() == [-1, 16, -1]
    # A cache written before compound cells: no "second" array, read as none.
    np.savez(tmp_path / "old.npz", crops=data.crops, pattern=data.pattern,
             mitosis=data.mitosis, weight=data.weight)
    assert load_cropset(tmp_path / "old.npz").seconds.tolist() == [-1, -1, -1]


def test_region_targets_mark_the_regions_of_both_patterns() -> None:
    pytest.importorskip("torch")  # train_hep2 imports it
    from tools.train_hep2 import region_targets

    idx = NAMES.index
    got = region_targets(np.array([idx("homogeneous"), idx("negative"), idx("golgi")]),
                         np.array([idx("nucleolar_clumpy"), -1, -1]))
    assert got.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_the_region_head_is_fitted_on_the_frozen_trunk(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tools.hep2_dataset import compound_crops
    from tools.hep2_net import Hep2Net, load_weights
    from tools.train_hep2 import fit_region_head, initial_model, region_fit_rows, region_targets

    make_tree(tmp_path / "cells", np.random.default_rng(6), per_class=6)
    single = folder_crops(tmp_path / "cells", CFG)
    single = CropSet(single.crops, single.pattern, np.zeros(len(single), np.int64),
                     single.weight)
    compound = compound_crops(range(950, 953), 12, CFG, rng_seed=3, width=240, height=180,
                              um_per_px=0.5, intensity=90.0)
    data = concat([single, compound], CFG.crop_px)
    rows = region_fit_rows(data, seed=0, per_class=2, compound=5)
    assert (data.seconds[rows] >= 0).sum() == 5 and (data.seconds[rows] < 0).sum() <= 2 * 17
    torch.manual_seed(0)
    model = Hep2Net(width=4).eval()
    x = torch.from_numpy(data.crops[:6])
    with torch.no_grad():
        before = model(x)
    record = fit_region_head(model, data, seed=0, steps=300, show=False)
    with torch.no_grad():
        after = model(x)
    # The pattern and mitosis heads read the same features with the same weights ...
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # ... the region head learnt: on what it was fitted on, it beats always saying the
    # more common answer of each region.
    fitted = region_fit_rows(data, seed=0)
    assert record["crops"] == len(fitted)
    truth = region_targets(data.pattern[fitted], data.seconds[fitted]) > 0
    with torch.no_grad():
        said = model(torch.from_numpy(data.crops[fitted]))[2].numpy() > 0
    baseline = np.maximum(truth.mean(0), 1 - truth.mean(0)).mean()
    assert (said == truth).mean() > baseline + 0.05
    # A checkpoint from before the region head (v5) still loads; other gaps do not.
    path = tmp_path / "v5.pt"
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("regions.")}
    torch.save({"model": old}, path)
    assert torch.equal(initial_model(path, 4).pattern.weight, model.pattern.weight)
    del old["pattern.bias"]
    with pytest.raises(RuntimeError, match=r"pattern\.bias"):
        load_weights(Hep2Net(width=4), old)


def test_drawn_scale_errors_leave_runs_without_them_untouched() -> None:
    from tools.hep2_dataset import SCALE_ERROR_SHARE, drawn_scale_error

    rng = np.random.default_rng(5)
    assert drawn_scale_error(rng, 1.0) == 1.0
    assert rng.random() == np.random.default_rng(5).random()  # no draw was taken
    errors = np.array([drawn_scale_error(np.random.default_rng(s), 1.4) for s in range(400)])
    off = errors[errors != 1.0]
    assert abs(len(off) / len(errors) - SCALE_ERROR_SHARE) < 0.1
    assert off.min() >= 1 / 1.4 - 1e-9 and off.max() <= 1.4 + 1e-9
    assert (off < 1).any() and (off > 1).any()  # both ways


def test_a_scale_error_cuts_the_cells_as_the_box_would_misread_them() -> None:
    from tools.hep2_dataset import field_cell_crops
    from tools.synth.hep2_fields import Hep2FieldSpec, generate_hep2_field

    f = generate_hep2_field(Hep2FieldSpec(seed=72_400, width=480, height=360, um_per_px=0.4,
                                          patterns=(("homogeneous", 1.0),), intensity=120.0))
    exact = field_cell_crops(f, CFG, np.random.default_rng(0))
    fine = field_cell_crops(f, CFG, np.random.default_rng(0), scale_error=0.5)
    assert len(exact) == len(fine) > 5
    # Believed twice as fine (half the µm a pixel), each cell spans half the crop's pixels
    # each way: a quarter of the area.
    ratio = fine.crops[:, 1].mean() / exact.crops[:, 1].mean()
    assert ratio == pytest.approx(0.25, abs=0.06)
