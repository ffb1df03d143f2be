# caffe-cae: one target per pipeline stage and per table/figure of the paper.
# Settings a user may override on the command line:
PYTHON ?= python3
VENV   ?= .venv
MODEL  ?= 4
DIM    ?= 10
MODE   ?= cpu
ITERS  ?= 50000
RUN    ?= 1
BACKEND ?=          # caffe (the engine; the default) or torch (PyTorch, Caffe's semantics)
NET    ?= $(if $(filter siamese deep_ae,$(MODEL)),$(MODEL),model$(MODEL))

CAE := $(VENV)/bin/caffe-cae
PY  := $(VENV)/bin/python

.PHONY: help deps setup image-setup prototxt schema engine engine-gpu docker docker-gpu data train test bench clean \
	reproduce-quick reproduce tables relu results

help:
	@echo "make deps | setup | prototxt | engine | docker | docker-gpu | data | train MODEL=3 DIM=30 MODE=cpu | test | bench"

# The system packages, one list: deps/debian-packages.txt. As root on Debian/Ubuntu the missing
# ones are installed with apt-get; otherwise one line names them and how to install them (exit 2).
# In the caffe-cae image (CAFFE_CAE_IMAGE set) the system is the image's: nothing to install.
deps:
	@$(if $(CAFFE_CAE_IMAGE),:,sh deps/install.sh)

# A virtual environment with the package (editable), the test tools and PyTorch for the
# second backend. TORCH pins the CPU build that lies on this machine's disk; elsewhere set
# e.g. TORCH='torch>=2.1' (an unpinned torch from PyPI is a multi-GB CUDA build).
TORCH ?= torch==2.13.0
setup: $(if $(CAFFE_CAE_IMAGE),image-setup,$(VENV)/.installed)
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -e '.[test,torch]'
	touch $@

# In the caffe-cae image: its venv (VENV=/opt/caffe-cae/venv, with the harness's packages) runs
# this checkout, installed editable (no download).
image-setup:
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .

# Every net of the paper at every code size, both syntaxes, into generated/.
prototxt: setup
	$(CAE) render --paper-grid --out generated

# Regenerate caffe_cae/proto/caffe_cae_pb2.py from the project's schema with protoc 31.1
# (grpcio-tools 1.75.1, the `dev` extra): its gencode runs on protobuf 6.31+ and 7.x alike.
schema:
	$(VENV)/bin/pip install -q 'grpcio-tools==1.75.1'
	$(PY) -m grpc_tools.protoc -Icaffe_cae/proto --python_out=caffe_cae/proto caffe_cae/proto/caffe_cae.proto
	$(PY) -m grpc_tools.protoc -Icaffe_cae/proto --python_out=caffe_cae/proto caffe_cae/proto/noh2015.proto

# MNIST idx .gz (MNIST_DIR, else data/mnist) -> data/hdf5/{train,test}{,_pairs}.h5 + list files.
data: setup
	$(CAE) data $(if $(MNIST_DIR),--mnist-dir $(MNIST_DIR))

# The Caffe engine: BVLC Caffe 1.0 + Unpooling in a cached Debian bullseye root file system
# (~/.cache/caffe-cae/engine/<recipe hash>, or $CAFFE_CAE_CACHE); rebuilt only when the recipe changes.
engine: deps setup
	$(CAE) engine build

# The GPU rootfs engine: Caffe with Debian bullseye's CUDA 11.2 for GPU_ARCHS (default: every
# compute capability from 6.0 to 8.6, plus PTX for newer GPUs). On a host with an NVIDIA driver the
# engine binds its devices and libraries, and `make train MODE=gpu` runs in it. No GPU needed to build.
GPU_ARCHS ?=
engine-gpu: deps setup
	$(CAE) engine build --gpu $(if $(GPU_ARCHS),--archs '$(GPU_ARCHS)')

# The caffe-cae images from docker/Dockerfile (one recipe): the engine and the harness, so that
#   docker run --rm -v "$$PWD:$$PWD" -w "$$PWD" caffe-cae:cpu make reproduce-quick
# works on any Docker host. Cached by recipe hash (the image's label): rebuilt only when the recipe
# or the harness changes. Through a Docker daemon, else a podman service started on demand; the
# debian:bullseye base is pulled, or made with debootstrap where no registry answers.
docker: deps setup
	$(CAE) engine build --kind docker

docker-gpu: deps setup
	$(CAE) engine build --kind docker --gpu $(if $(GPU_ARCHS),--archs '$(GPU_ARCHS)')

# Train one net: run directory RUN_DIR (manifest.json, log.jsonl, snapshots); seed = RUN.
# Ctrl-C snapshots and stops; RESUME=1 continues RUN_DIR as recorded; FORCE=1 overwrites a finished run.
RUN_DIR ?= runs/$(NET)_d$(DIM)_run$(RUN)
train: data
	$(CAE) train --out $(RUN_DIR) $(if $(BACKEND),--backend $(BACKEND)) $(if $(RESUME),--resume,--net $(NET) --dim $(DIM) \
	  --mode $(MODE) --iters $(ITERS) --seed $(RUN) $(if $(FORCE),--force)) $(TRAIN_ARGS)

# ms per SGD iteration of every net (D=10). Default: the torch backend against the limit (a
# float32 GEMM's GFLOP/s, same process and threads) and the peer (the net in plain PyTorch),
# interleaved -> bench/results_torch.json. BACKEND=caffe: the engine and the harness's own costs
# -> bench/results_caffe.json.
BENCH_BACKEND = $(or $(strip $(BACKEND)),torch)
bench: setup
	$(CAE) bench --backend $(BENCH_BACKEND) $(if $(filter torch,$(BENCH_BACKEND)),--no-harness) \
	  --out bench/results_$(BENCH_BACKEND).json

# The paper's grid (caffe-cae grid): train -> extract -> analyze every run, then the report.
# Re-running finishes only what is missing. EXECUTOR=slurm submits a job array instead.
# QUICK_ITERS: chosen so `make reproduce-quick` ends in about 20 minutes on 2 cores (README).
QUICK_ITERS ?= 300
QUICK_MLP_EPOCHS ?= 300
JOBS        ?= 2
EXECUTOR    ?= local
GRID_OUT    ?= runs/paper
QUICK_OUT   ?= runs/quick$(if $(filter torch,$(BACKEND)),_torch)
BATCH_RUNS  ?= 1
reproduce: deps setup engine data prototxt
	$(CAE) grid --nets all --dims paper --runs 3 --iters 50000 --mode $(MODE) $(if $(BACKEND),--backend $(BACKEND)) \
	  --batch-runs $(BATCH_RUNS) --executor $(EXECUTOR) --jobs $(JOBS) --out $(GRID_OUT)

# The short grid: every net at D=10 and D=2, one run each, QUICK_ITERS iterations; its
# train-stage loss is measured on the first 10000 training images (the paper: all 60000)
# and its classifiers are cross-validated with 3 folds (the paper: 10), the MLP trained for
# QUICK_MLP_EPOCHS epochs (the paper: 6000; the report's conditions say so).
reproduce-quick: deps setup engine data prototxt
	$(CAE) grid --nets all --dims 10,2 --runs 1 --iters $(QUICK_ITERS) --mode $(MODE) $(if $(BACKEND),--backend $(BACKEND)) \
	  --jobs $(JOBS) --out $(QUICK_OUT) --set data.train_size=10000 --analyze-arg=--folds=3 \
	  --analyze-arg=--mlp-epochs=$(QUICK_MLP_EPOCHS)
	@echo "The report: $(CURDIR)/$(QUICK_OUT)/report/index.html"

# Table 4 on the paper's schedule, published in results/ (small files; README section and
# results/report/ remade): trains what is missing in caffe_cae/results.py's order, in
# RESULTS_RUNS (snapshots; outside the work tree), resuming after any interruption.
# VARIANT=NAME: that controlled variant's runs instead (results/variants/NAME; caffe_cae/results.py VARIANTS).
RESULTS_RUNS   ?= $(HOME)/.cache/caffe-cae/results-runs
RESULTS_LIMIT  ?=
VARIANT        ?=
results: setup data
	$(CAE) results --runs $(RESULTS_RUNS) --jobs $(JOBS) --backend $(or $(BACKEND),torch) \
	  $(if $(RESULTS_LIMIT),--limit $(RESULTS_LIMIT)) $(if $(VARIANT),--variant $(VARIANT))

# Tables 1-3 and the Section 5.1 compression figures, from the generated files (D = 2).
tables: setup
	@for net in siamese deep_ae model1 model2 model3 model4 model5; do \
	  $(CAE) inspect generated/legacy/$${net}_d2_train_test.prototxt; echo; done

# Section 5.2: the paper's ReLU failure. Training stops at the first non-finite loss and
# names the iteration and the first blob that went non-finite.
relu: data
	-$(CAE) train --net $(NET) --dim $(DIM) --mode $(MODE) --iters 200 --seed 1 --out runs/relu_$(NET)_d$(DIM) \
	  --force --set net.activation=relu

# The README's test command: system packages, set up, build or reuse the engine, run every test.
test: deps setup engine
	$(PY) -m pytest --durations=20 tests

clean:
	rm -rf $(VENV) build *.egg-info
