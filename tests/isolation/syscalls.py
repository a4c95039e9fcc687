"""Probes the syscalls the workspace seccomp profile must refuse.

Run inside a workspace container (`python3 - < syscalls.py`). Prints one
JSON object: probe name -> errno the call failed with (0 when it succeeded).
The arguments are chosen so that a call which reached the kernel would
succeed or fail with something other than EPERM: an EPERM here is the
filter's answer, not the kernel's.
"""
import ctypes
import json
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SIGCHLD = 17
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def call(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if ret == -1:
        return ctypes.get_errno()
    return 0


def clone_with(flags):
    # A raw clone that succeeds forks this interpreter: the child leaves at once.
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(56), ctypes.c_long(flags | SIGCHLD), 0, 0, 0, 0)
    if ret == 0:
        os._exit(0)
    if ret > 0:
        os.waitpid(ret, 0)
        return 0
    return ctypes.get_errno()


buf = ctypes.create_string_buffer(64)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
probes = {
    "io_uring_setup": lambda: call(425, 1, 0),
    "io_uring_enter": lambda: call(426, 0, 0, 0, 0, 0, 0),
    "io_uring_register": lambda: call(427, 0, 0, 0, 0),
    "ptrace_attach": lambda: call(101, 16, 0x3FFFFFFF, 0, 0),
    "process_vm_readv": lambda: call(310, os.getpid(), ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0),
    "process_vm_writev": lambda: call(311, os.getpid(), ctypes.addressof(iov), 1, ctypes.addressof(iov), 1, 0),
    "keyctl": lambda: call(250, 0, -3, 0),
    "add_key": lambda: call(248, 0, 0, 0, 0, 0),
    "request_key": lambda: call(249, 0, 0, 0, 0),
    "userfaultfd": lambda: call(323, 0),
    "bpf": lambda: call(321, 0, 0, 0),
    "perf_event_open": lambda: call(298, 0, 0, -1, -1, 0),
    "mount": lambda: call(165, 0, 0, 0, 0, 0),
    "umount2": lambda: call(166, 0, 0),
    "fsopen": lambda: call(430, 0, 0),
    "fsconfig": lambda: call(431, -1, 0, 0, 0, 0),
    "fsmount": lambda: call(432, -1, 0, 0),
    "fspick": lambda: call(433, -1, 0, 0),
    "move_mount": lambda: call(429, -1, 0, -1, 0, 0),
    "open_tree": lambda: call(428, -1, 0, 0),
    "mount_setattr": lambda: call(442, -1, 0, 0, 0, 0),
    "pivot_root": lambda: call(155, 0, 0),
    "chroot": lambda: call(161, 0),
    "unshare_user": lambda: call(272, CLONE_NEWUSER),
    "unshare_none": lambda: call(272, 0),
    "setns": lambda: call(308, -1, 0),
    "clone_newuser": lambda: clone_with(CLONE_NEWUSER),
    "clone_newns": lambda: clone_with(CLONE_NEWNS),
    "clone_newnet": lambda: clone_with(CLONE_NEWNET),
    "clone3": lambda: call(435, 0, 0),
    "kexec_load": lambda: call(246, 0, 0, 0, 0),
    "kexec_file_load": lambda: call(320, -1, -1, 0, 0, 0),
    "init_module": lambda: call(175, 0, 0, 0),
    "finit_module": lambda: call(313, -1, 0, 0),
    "delete_module": lambda: call(176, 0, 0),
    "open_by_handle_at": lambda: call(304, -1, 0, 0),
    "name_to_handle_at": lambda: call(303, -100, 0, 0, 0, 0),
    "personality_addr_no_randomize": lambda: call(135, 0x0040000),
    "socket_packet": lambda: call(41, 17, 3, 0),
    "socket_netlink": lambda: call(41, 16, 3, 0),
    "socket_vsock": lambda: call(41, 40, 1, 0),
    "socket_inet_raw": lambda: call(41, 2, 3, 1),
    "socket_inet6_raw": lambda: call(41, 10, 3, 58),
    # Controls: these must keep working.
    "ok_fork": lambda: clone_with(0),
    "ok_personality_query": lambda: call(135, 0xFFFFFFFF),
    "ok_socket_unix": lambda: call(41, 1, 1, 0),
    "ok_socket_inet": lambda: call(41, 2, 1, 0),
    "ok_socket_inet6": lambda: call(41, 10, 1, 0),
    "ok_landlock_abi": lambda: call(444, 0, 0, 1),
}
print(json.dumps({name: probe() for name, probe in probes.items()}))
