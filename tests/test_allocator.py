"""The CLIs' relaunch under mimalloc (glidre_jax/allocator.py)."""
import os
import subprocess
import sys
import textwrap

import pytest

from glidre_jax import allocator

LIB = allocator.library()
needs_mimalloc = pytest.mark.skipif(LIB is None, reason="cmeel-mimalloc is not installed")


@needs_mimalloc
def test_preload_environment_puts_mimalloc_first_once():
  env = allocator.preload_environment({"LD_PRELOAD": "/other/lib.so", "PATH": "/bin"})
  assert env["LD_PRELOAD"] == f"{LIB}:/other/lib.so" and env["PATH"] == "/bin"
  assert env["MIMALLOC_PURGE_DELAY"] == allocator.PURGE_DELAY_MS
  # A purge delay the user chose stays.
  assert allocator.preload_environment({"MIMALLOC_PURGE_DELAY": "5"})["MIMALLOC_PURGE_DELAY"] == "5"
  # Nothing to change: relaunched already, preloaded already, or opted out.
  assert allocator.preload_environment(env) is None
  assert allocator.preload_environment({"LD_PRELOAD": LIB}) is None
  assert allocator.preload_environment({allocator.CHOICE: "system"}) is None


def test_an_unknown_allocator_choice_is_an_error_naming_the_variable():
  with pytest.raises(ValueError, match="GLIDRE_ALLOCATOR='tcmalloc'.*mimalloc, system"):
    allocator.preload_environment({allocator.CHOICE: "tcmalloc"})


SCRIPT = textwrap.dedent("""
    import os, sys
    print("before", flush=True)
    from glidre_jax import allocator
    allocator.relaunch()
    maps = open("/proc/self/maps").read()
    print("argv", sys.argv[1:])
    print("pid", os.getpid())
    print("loaded", "libmimalloc" in maps)
    print("purge", os.environ.get("MIMALLOC_PURGE_DELAY"))
    print("xla", os.environ.get("XLA_FLAGS"))
""")


def _clean_env():
  return {k: v for k, v in os.environ.items()
          if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY", "GLIDRE_ALLOCATOR_RELAUNCHED",
                       "XLA_FLAGS")}


@needs_mimalloc
@pytest.mark.parametrize("choice", ["mimalloc", "system"])
def test_relaunch_reexecutes_the_same_command_with_mimalloc_loaded(tmp_path, choice):
  script = tmp_path / "glidre-child"  # named as our console scripts are
  script.write_text(SCRIPT)
  env = _clean_env()
  env[allocator.CHOICE] = choice
  proc = subprocess.Popen([sys.executable, str(script), "--flag", "x y"], env=env,
                          stdout=subprocess.PIPE, text=True)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  lines = out.splitlines()
  relaunched = choice == "mimalloc"
  # The lines before relaunch() print twice when it re-executes (flushed
  # first, so none is lost); the arguments and the process stay the same.
  assert lines.count("before") == (2 if relaunched else 1)
  assert "argv ['--flag', 'x y']" in lines
  assert f"pid {proc.pid}" in lines
  assert f"loaded {relaunched}" in lines
  assert f"purge {allocator.PURGE_DELAY_MS if relaunched else None}" in lines
  # The memory-saving scheduler, under either allocator.
  assert f"xla {allocator.SCHEDULER_FLAG}=false" in lines


def test_xla_flags_add_the_memory_saving_scheduler_unless_set():
  assert allocator.xla_flags("") == f"{allocator.SCHEDULER_FLAG}=false"
  assert (allocator.xla_flags("--xla_force_host_platform_device_count=2")
          == f"--xla_force_host_platform_device_count=2 {allocator.SCHEDULER_FLAG}=false")
  mine = f"{allocator.SCHEDULER_FLAG}=true"
  assert allocator.xla_flags(mine) == mine


@needs_mimalloc
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_relaunch_leaves_other_programs_alone(tmp_path, how):
  # Another program (or a REPL, a notebook) calling an entry point is not
  # re-executed: only `python -m glidre_jax.…` and `glidre-…` scripts are.
  script = tmp_path / "child.py"
  script.write_text(SCRIPT)
  args, stdin = ([str(script)], None) if how == "script" else (["-"], SCRIPT)
  out = subprocess.run([sys.executable, *args], env=_clean_env(), input=stdin,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  assert out.count("before") == 1 and "loaded False" in out and "xla None" in out


def test_the_module_prints_what_to_preload():
  out = subprocess.run([sys.executable, "-m", "glidre_jax.allocator"], capture_output=True,
                       text=True, check=True, env={**os.environ, "GLIDRE_ALLOCATOR": "mimalloc"})
  # The scheduler flag whatever the allocator.
  assert f"XLA_FLAGS='{allocator.xla_flags(os.environ.get('XLA_FLAGS', ''))}'" in out.stdout
  if LIB is None:
    assert out.stdout.startswith("# nothing to preload")
  elif LIB in os.environ.get("LD_PRELOAD", ""):
    assert "nothing to preload" in out.stdout
  else:
    assert out.stdout.startswith(f"LD_PRELOAD={LIB}")
