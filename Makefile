# The two set-up commands (see README): `make gui` (the main job) and `make test`.
# Both create .venv on first use; a CPU build of torch is pinned so that a fresh machine
# without a GPU does not download the multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: demo gui test install install-test sysdeps clean
SCREENSHOT ?= demo_out/window.png

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## The engine end to end without a GUI: simulate, train, pick and score phantom data (CPU is fine).
demo: $(VENV)/.installed
	$(VENV)/bin/cryopicker demo

## Main job: open napari with the sample tomogram, its picks and every CryoPicker panel.
## Without a screen (a server, CI) it runs the scripted GUI demo on a virtual X server
## instead: sample -> training -> picking, then a screenshot of the window in $(SCREENSHOT).
gui: $(VENV)/.installed
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = "Darwin" ]; then \
	  $(VENV)/bin/napari-cryopicker; \
	else \
	  $(MAKE) --no-print-directory sysdeps; \
	  if command -v xvfb-run >/dev/null; then \
	    echo "No screen here: running the scripted GUI demo on a virtual X server (screenshot: $(SCREENSHOT))"; \
	    QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/napari-cryopicker --demo --screenshot $(SCREENSHOT); \
	  else \
	    echo "No screen and no xvfb-run here (the virtual X server is installed only when make runs as root;"; \
	    echo "as root: apt-get install xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libegl1 ...; see README)."; \
	    echo "Running the same loop without a window instead: cryopicker demo"; \
	    $(VENV)/bin/cryopicker demo; \
	  fi; \
	fi

## Headless display packages for Qt/napari under Xvfb (Debian; only when run as root).
sysdeps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! command -v xvfb-run >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxkbcommon-x11-0 \
	    libdbus-1-3 libegl1 libfontconfig1 libgl1 >/dev/null; \
	fi

## Whole test suite (core + napari GUI under a virtual X server).
test: $(VENV)/.installed-test sysdeps
	QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache
