# Two commands a new user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

# constraints.txt pins the tested set (torch 2.14.1 + torchvision 0.29.1 install quickly
# here; an unpinned torch would pull the newest release and several GB more).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lite]'
	touch $@

demo: install
	$(BIN)/imgclass demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs demo-data
