"""Probes which paths a process can write (and a few it can read).

Run as a descendant of the workspace agent (through the CLI's Bash tool)
to see Landlock's answer, or through `docker exec` (outside the agent's
Landlock domain) to see what DAC and the mounts alone allow. Prints one
JSON object: probe name -> "ok" or the errno name of the failure.
"""
import errno
import json
import os


def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def write(path):
    def go():
        with open(path, "w") as f:
            f.write("x")
    return go


def mkdir(path):
    return lambda: os.mkdir(path)


def read(path):
    def go():
        with open(path, "rb") as f:
            f.read(1)
    return go


tag = str(os.getpid())
probes = {
    "workspace_file": write(f"/workspace/probe-{tag}"),
    "workspace_dir": mkdir(f"/workspace/probe-dir-{tag}"),
    "tmp_file": write(f"/tmp/probe-{tag}"),
    "dev_null": write("/dev/null"),
    # World-writable tmpfs: DAC allows it, Landlock must not.
    "dev_shm_file": write(f"/dev/shm/probe-{tag}"),
    # The process's own /proc entry: DAC allows it, Landlock must not.
    "proc_self_comm": write("/proc/self/comm"),
    # The socket directory: root's once the agent is up (DAC denies it too).
    "socket_dir_file": write(f"/run/agentbox/probe-{tag}"),
    "rootfs_file": write(f"/probe-{tag}"),
    "etc_passwd": write("/etc/passwd"),
    "home_agent_file": write(f"/home/agent/probe-{tag}"),
    # PID 1 (tini) runs as the same uid but outside the agent's Landlock
    # domain: its environment and memory are out of reach from inside.
    "read_pid1_environ": read("/proc/1/environ"),
    "read_pid1_mem": read("/proc/1/mem"),
}
print(json.dumps({name: attempt(fn) for name, fn in probes.items()}))
