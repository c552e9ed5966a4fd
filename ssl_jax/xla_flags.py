"""XLA_FLAGS for simulated CPU devices: the device count plus generous collective timeouts.

With `--xla_force_host_platform_device_count=N` XLA:CPU runs each device's program on
its own thread, and a collective (all-reduce, all-gather, ...) waits in a rendezvous
for all N threads. XLA logs a warning when a thread has waited
`xla_cpu_collective_call_warn_stuck_timeout_seconds` (default 20) and aborts the whole
process (`rendezvous.cc: Termination timeout ... Fatal Python error: Aborted`) when it
has waited that *plus* `xla_cpu_collective_call_terminate_timeout_seconds` (default 40),
i.e. after 60 s. On a busy machine with fewer cores than simulated devices one device's
thread can lag that much, so a healthy run dies. The values below (a warning after 1
minute, the abort after 11) keep real deadlocks fatal while tolerating the lag.

Flag names are those of jaxlib 0.10.2's XLA (`xla/debug_options_flags.cc`; the proto
field of the warning is `..._warn_stuck_seconds`, the *flag* is
`..._warn_stuck_timeout_seconds`). XLA aborts at start-up on an unknown name in
XLA_FLAGS, so tests/test_collectives.py starts JAX with these flags. Not set:
`xla_cpu_collective_timeout_seconds` (cross-process gloo collectives; its default, 30
minutes, is already generous).

Pure Python (no jax, no TensorFlow): it must run before JAX initialises its backend.
"""

DEVICE_COUNT_FLAG = 'xla_force_host_platform_device_count'

# Seconds. XLA adds the two: a thread aborts after warn + terminate seconds of waiting.
COLLECTIVE_TIMEOUTS = (
    ('xla_cpu_collective_call_warn_stuck_timeout_seconds', 60),
    ('xla_cpu_collective_call_terminate_timeout_seconds', 600),
)


def flag_name(token):
  """'--xla_foo=1' / '--xla_foo' -> 'xla_foo' (XLA takes only the '--' form)."""
  return (token[2:] if token.startswith('--') else token).split('=', 1)[0]


def cpu_xla_flags(old=None, device_count=None, extra=()):
  """The XLA_FLAGS string with the project's CPU flags appended to a user's.

  Args:
    old: the current XLA_FLAGS (str or None); kept verbatim, first.
    device_count: int >= 1, simulated CPU devices
      (`--xla_force_host_platform_device_count`), or None to leave the count alone.
    extra: further '--name=value' strings (e.g. the tests' compile flags).
  Returns:
    str: `old`, then `--<name>=<value>` for the device count, each of
    COLLECTIVE_TIMEOUTS and each of `extra`, skipping every flag whose name `old`
    (or an earlier one) already sets: the user's value wins and no flag appears twice.
  Raises:
    ValueError: device_count not an int >= 1, or an `extra` entry not '--name[=value]'.
  """
  if device_count is not None and (isinstance(device_count, bool)
                                   or not isinstance(device_count, int) or device_count < 1):
    raise ValueError(f'device_count={device_count!r}: must be an int >= 1 or None')
  tokens = (old or '').split()
  seen = {flag_name(t) for t in tokens}
  new = []
  if device_count is not None:
    new.append(f'--{DEVICE_COUNT_FLAG}={device_count}')
  new += [f'--{name}={value}' for name, value in COLLECTIVE_TIMEOUTS]
  for flag in extra:
    if not (isinstance(flag, str) and flag.startswith('--') and flag_name(flag)
            and ' ' not in flag):
      raise ValueError(f'extra flag {flag!r}: must be "--name" or "--name=value"')
    new.append(flag)
  for flag in new:
    if flag_name(flag) not in seen:
      seen.add(flag_name(flag))
      tokens.append(flag)
  return ' '.join(tokens)
