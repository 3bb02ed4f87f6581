# circuit-tracer 0.5.0 in its own venv at /tmp/ct-venv (made once); sourced by the circuit-tracer checks.
venv=/tmp/ct-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu || "$venv/bin/pip" install -q torch==2.13.0
  "$venv/bin/pip" install -q circuit-tracer==0.5.0 numpy
fi
