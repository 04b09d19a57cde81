# One set-up path for a fresh machine: Debian packages, .venv, torch (CPU, pinned) first,
# then the project with its extras. `make run` and `make test` set up on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0; an unpinned torch would pull GBs of CUDA packages.
TORCH := torch==2.13.0
EXTRAS ?= cpu,train,pretrained,test,dev
# The aiSFX encoder's weights (CC BY 4.0) ship in this wheel; its requirements pin numpy and
# librosa versions that do not install here, and it needs none of them: --no-deps.
AISFX := aisfx==0.1.2
# prometheus (promtool) and systemd (systemd-analyze): tests/test_deploy.py checks deploy/ with them;
# chromium: tests/test_report.py loads audioclust-report's page in it (headless).
APT_PACKAGES := libsndfile1 libportaudio2 prometheus systemd chromium
FSDD ?= ../shared/datasets/fsdd/recordings
STAMP := $(VENV)/.setup-done

.PHONY: setup run baselines test lint bench clean help

help:
	@echo "make run    - set up if needed, then the main job: stream the shipped demo recording"
	@echo "             through the shipped default model (one JSON record per window on stdout)"
	@echo "make baselines - the baseline clustering grid on FSDD digits"
	@echo "make test   - set up if needed, then ruff and the whole test suite"
	@echo "make setup  - Debian packages, .venv, torch==2.13.0 (CPU), audioclust[$(EXTRAS)],"
	@echo "             $(AISFX) (--no-deps: the aiSFX encoder's weights)"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(AISFX)
	@$(BIN)/python -c "import torch, onnxruntime, audioclust.models.frontend; \
	  print('audioclust ready: torch', torch.__version__, '| onnxruntime', onnxruntime.__version__)"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/audioclust-stream --source file models/assets/demo-fsdd.flac

baselines: $(STAMP)
	$(BIN)/audioclust-eval baselines --data $(FSDD) --labels digit --out runs/baselines-digit

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
