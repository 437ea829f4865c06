# Eyepiece: the two first commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System packages the test suite uses: the broker, systemd-analyze, shellcheck for deploy/.
SYSTEM_PACKAGES := mosquitto systemd shellcheck

.PHONY: demo test lint typecheck pytest system-deps model model-hep2 bench bench-pipeline eval-cases eval-hep2 eval-hep2-wells eval-hep2-seg tune-hep2 bench-hep2 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is never pulled in here: the runtime and the tests do not need it.
	$(BIN)/pip install --quiet -e '.[test,tools]'
	# Type stubs of the Jetson-only TensorRT API, for mypy; --no-deps, or pip would try to
	# install TensorRT itself.
	$(BIN)/pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

## demo: generate sample fields, score them on the CPU with the shipped INT8 model
demo: $(STAMP)
	$(BIN)/python -m tools.make_samples --out samples/her2 --count 8 --seed 2026
	$(BIN)/appliance run
	@echo "overlays: var/overlays/   store: var/results.sqlite"

## test: lint, type-check and the whole test suite
test: system-deps $(STAMP) lint typecheck pytest

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages (install them as root):$$missing"; exit 1; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check appliance tools tests

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

## model: train, quantise, evaluate and publish models/her2 (needs torch: pip install torch==2.13.0)
model: $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/python -m tools.train_her2 --out build/her2
	$(BIN)/python -m tools.quantise_model --fp32 build/her2/her2_fp32.onnx --out build/her2/her2_int8.onnx
	$(BIN)/python -m tools.quantise_model --fp32 build/her2/her2_fp32.onnx --out build/her2/her2_int8_trt.onnx --symmetric
	$(BIN)/python -m tools.publish_model --build build/her2 --eval build/none
	$(BIN)/python -m tools.eval_her2 --precision int8 --out build/eval
	$(BIN)/python -m tools.eval_her2 --precision fp32 --out build/eval
	$(BIN)/python -m tools.eval_her2 --precision int8 --estimate-scale --out build/eval
	$(BIN)/python -m tools.eval_her2 --precision int8_trt --out build/eval
	$(BIN)/python -m tools.publish_model --build build/her2 --eval build/eval

## bench: per-stage timings, FP32 vs INT8, and the classical reference pipeline
bench: $(STAMP)
	$(BIN)/python -m tools.bench_her2

## bench-pipeline: real-time pipeline throughput, latency, drops, and a 10-minute memory soak
bench-pipeline: $(STAMP)
	$(BIN)/python -m tools.bench_pipeline --seconds 30 --soak-seconds 600

## eval-cases: positive-control check and calibration on generated slides (about 5-10 min)
eval-cases: $(STAMP)
	$(BIN)/python -m tools.eval_cases --json build/eval/eval_cases.json

## model-hep2: train, quantise and measure the HEp-2 classifier into build/hep2 with the
## shipped recipe (about 1 h 10 min on 2 cores: 25 min to generate the crops, half of
## their fields through a drawn camera, 40 min of bfloat16 training, 2 min for the region
## head; needs torch). Copy to models/hep2 to ship it. An interrupted run goes on with
## --resume.
model-hep2: $(STAMP)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/python -m tools.train_hep2 --cache build/hep2_cache --per-class 4500 --compound 18000 \
	  --steps 12000 --lr 0.003 --width 32 --bf16 --camera-looks 0.5 \
	  --checkpoint build/hep2_v9.pt --out build/hep2 --plots build/hep2

## eval-hep2: HEp-2 assay on held-out generated specimens, INT8 and FP32, targets of issue #7;
## then INT8 again with the box calibrated as a lab would (about 7 min per run on 2 cores)
eval-hep2: $(STAMP)
	$(BIN)/python -m tools.eval_hep2 --precision int8 --specimens 20 --json build/eval/eval_hep2_int8.json
	$(BIN)/python -m tools.eval_hep2 --precision fp32 --specimens 20 --json build/eval/eval_hep2_fp32.json
	$(BIN)/python -m tools.eval_hep2 --precision int8 --specimens 20 --calibrate --out-dir build/eval \
		--json build/eval/eval_hep2_int8_calibrated.json

## eval-hep2-wells: HEp-2 wells of 3 fields pooled against single fields (about 10 min)
eval-hep2-wells: $(STAMP)
	$(BIN)/python -m tools.eval_hep2_wells --wells 10 --fields 3 --calibrate --json build/eval/hep2_wells.json

## eval-hep2-seg: HEp-2 segmentation by pattern: cells found, split, merged, missed, outlined
eval-hep2-seg: $(STAMP)
	$(BIN)/python -m tools.eval_hep2_segmentation --json build/eval/hep2_segmentation.json

## tune-hep2: the HEp-2 specimen rules' thresholds, mixed patterns found vs false ones
## (about 5 min; prints the choice, the defaults stay a person's decision)
tune-hep2: $(STAMP)
	$(BIN)/python -m tools.tune_hep2 --json build/eval/tune_hep2.json

## bench-hep2: HEp-2 classifier cells/s and whole-assay fields/s, FP32 vs INT8
bench-hep2: $(STAMP)
	$(BIN)/python -m tools.bench_hep2 --json build/bench/bench_hep2.json

clean:
	rm -rf build var samples .pytest_cache .mypy_cache .ruff_cache
