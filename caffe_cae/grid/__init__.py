"""The paper's grid: every (net, D, seed) trained, extracted and analysed, then one report.

Each run goes through the stages train -> extract -> analyze; a stage is skipped when its
output says it is complete, so re-running the grid after an interruption finishes only what
is missing. The grid state ``OUT/grid.json`` records every run's status, attempts and error.

* :mod:`.plan`: the runs, what each still needs (judged from its files), the command lines;
* :mod:`.state`: ``OUT/grid.json`` under its lock, and the checks before any training;
* :mod:`.local`: the local executor (``jobs`` runs at once, retries, SIGTERM, the report);
* :mod:`.slurm`: the Slurm executor (an array job and a report job that depends on it);
* :mod:`.progress`: plain lines, or a progress bar on a terminal.
"""
from .local import make_report, run_local, usable_cores
from .plan import STAGES, dry_run_lines, expand, parse_dims, parse_nets, read_json, stage_done
from .progress import make as make_display
from .slurm import submit as submit_slurm
from .state import STATE_FILE, read_state

__all__ = ["STAGES", "STATE_FILE", "dry_run_lines", "expand", "make_display", "make_report", "parse_dims",
           "parse_nets", "read_json", "read_state", "run_local", "stage_done", "submit_slurm", "usable_cores"]
