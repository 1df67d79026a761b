"""Train and evaluate CMAH.

  python main.py --config=configs/default.py --workdir=work/default
  python main.py --config=configs/default.py:bits=32,runlocal --workdir=work/smoke

Multi-host: pass --distributed (or run under a cluster that JAX detects: SLURM, TPU pod,
Open MPI) and every process runs this same command; see launch/.

Exit status: 0 finished (report written); 3 stopped by SIGTERM/SIGINT with a checkpoint
saved (the same command resumes it); 1 an error, named on stderr.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", None, "Call jax.distributed.initialize(). Default: when a cluster "
    "environment is detected (SLURM_NTASKS>1, TPU pod, JAX_COORDINATOR_ADDRESS).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose checkpoint was written with a "
    "different config (e.g. more steps). Without it such a resume stops and lists the "
    "changed fields.")
flags.mark_flags_as_required(["config", "workdir"])


def _cluster_detected() -> bool:
  env = os.environ
  return (int(env.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
          or "MEGASCALE_COORDINATOR_ADDRESS" in env or "TPU_WORKER_HOSTNAMES" in env)


def main(argv):
  del argv
  import jax  # after absl parsed flags (JAX_PLATFORMS etc. may come from the environment)

  if _DISTRIBUTED.value or (_DISTRIBUTED.value is None and _cluster_detected()):
    jax.distributed.initialize()
  logging.info("JAX %s: process %d of %d, %d local / %d global devices (%s)",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  print(f"[cmah_jax] process {jax.process_index()}/{jax.process_count()}, "
        f"{jax.local_device_count()} local / {jax.device_count()} global "
        f"{jax.devices()[0].platform} devices", flush=True)

  from cmah_jax import checkpointing, resume, run, workdir_lock
  try:
    result = run.run_experiment(_CONFIG.value, _WORKDIR.value,
                                allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (resume.ConfigChangedError, checkpointing.CheckpointWriteError,
          checkpointing.DamagedCheckpointError, workdir_lock.WorkdirBusyError) as e:
    sys.exit(f"[cmah_jax] {type(e).__name__}: {e}")  # the message says what to do
  if result.stopped:  # checkpointed, not finished: a scheduler requeues it
    sys.exit(run.STOPPED_EXIT)


def _flag_error(error: Exception) -> str:
  """absl's flag error on one line: a config file that raised is reported by its flag and
  the error it raised (the last line of the traceback ml_collections embeds)."""
  lines = [line for line in str(error).splitlines() if line.strip()]
  if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
    return f"{lines[0].split(': ')[0]}: {lines[-1].strip()}"
  return " ".join(line.strip() for line in lines)


def parse_flags(argv):
  """absl's flag parsing, with every bad `--config` reported on one line instead of a
  traceback: a config file that is missing or raises, and a `--config.KEY=VALUE` that
  names no config key (or whose value does not fit it)."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a config file that failed to load raises on first use
    return rest
  except flags.Error as e:
    sys.exit(f"main.py: {_flag_error(e)}\nPass --helpshort or --helpfull to see help on flags.")
  except OSError as e:
    sys.exit(f"main.py: --config: {' '.join(str(e).split())}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    # ml_collections raises AttributeError from a KeyError whose message is the quoted
    # key, then a suggestion line.
    missing = e if isinstance(e, KeyError) else e.__context__
    if isinstance(missing, KeyError) and missing.args:
      key, *suggestion = str(missing.args[0]).splitlines()
      given = [g for g in given if g.endswith("." + key.strip("'\""))] or given
      reason = " ".join(["no such key."] + [line.strip() for line in suggestion])
    else:
      reason = " ".join(str(e).split())
    sys.exit(f"main.py: bad config override {' / '.join(given) or '(none given)'}: {reason} "
             "(keys are the fields of cmah_jax/config.py; model sizes and switches go under "
             "config.model.overrides: ModelConfig in cmah_jax/models/variants.py)")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
