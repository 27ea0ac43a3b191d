# Two commands matter: `make demo` (set up, render the sample job) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# LAME built for this CPU (tools/build_lame.py; skipped with a note where there is no C compiler)
LAME_SO := mindscript/_native/libmp3lame.so
# the DSP kernels (meter, true-peak interpolator, limiter release) built for this CPU (tools/build_dsp.py; numpy without)
DSP_SO := mindscript/_native/libmsdsp.so

.PHONY: setup demo test bench lint clean worker soak audit

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(LAME_SO): $(STAMP) tools/build_lame.py $(wildcard native/lame/*.h native/lame/*/*.h native/lame/*/*.c native/lame/*/*/*)
	$(PY) tools/build_lame.py

$(DSP_SO): $(STAMP) tools/build_dsp.py tools/build_lame.py $(wildcard native/dsp/*.c native/dsp/*.h)
	$(PY) tools/build_dsp.py

setup: $(STAMP) $(LAME_SO) $(DSP_SO)

demo: setup
	$(PY) examples/make_assets.py
	$(PY) flows/render.py examples/jobs/sample.json

test: setup
	$(PY) -m pytest -q

worker: setup
	$(PY) deployments/serve.py

# Render vs the ffmpeg, pydub and one-core-floor peers (10 min, 5 interleaved runs), memory at 5/15/60 min, throughput for
# MAX_JOBS 1-3, the served flow's overhead, the TTS stem; each appends a dated section to bench/RESULTS.md.
bench: setup
	$(PY) bench/render_bench.py --record --repeats 5
	$(PY) bench/flow_overhead.py --runs 5 --record
	$(PY) bench/tts_bench.py --seconds-per-char 0.004 --record

# Soak under faults (issue 7): two workers, SOAK_JOBS mixed jobs, faults injected; one summary line, exit 1 on a
# failed check. SOAK_ARGS=--record appends the line to bench/RESULTS.md.
SOAK_JOBS ?= 200
soak: setup
	$(PY) bench/soak.py --jobs $(SOAK_JOBS) $(SOAK_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check mindscript tasks flows tests bench examples deployments tools

# pip-audit over the installed dependencies (tools/audit.py): exit 1 on a known vulnerability; when the
# vulnerability service is unreachable it prints AUDIT NOT RUN and exits 0 (AUDIT_STRICT=1: exit 2).
audit: $(STAMP)
	$(PY) tools/audit.py

clean:
	rm -rf output .mindscript .pytest_cache bench/.cache
