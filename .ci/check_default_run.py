"""After `make all` on the embedded default: the fine-tuned model must have learnt (validation loss below the
base's) and must answer (at most 5% empty answers). One line per finding; exit 1 when either fails."""

import json
import sys
from pathlib import Path

MAX_EMPTY = 0.05
report = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny/reports/compare.json")
summary = json.loads(report.read_text())["summary"]
base, tuned = summary["base"], summary["fine-tuned"]
failures = []
if not tuned["validation_loss"] < base["validation_loss"]:
    failures.append(f"loss {tuned['validation_loss']}, not below the base's {base['validation_loss']}")
if tuned["empty_answers"] > MAX_EMPTY:
    failures.append(f"{tuned['empty_answers']:.0%} of fine-tuned answers are empty (at most {MAX_EMPTY:.0%})")
print(
    f"{report}: validation loss {base['validation_loss']} -> {tuned['validation_loss']}, empty answers "
    f"{tuned['empty_answers']:.0%}, stop rate {tuned['stop_rate']:.0%}"
)
for failure in failures:
    print(f"error: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
