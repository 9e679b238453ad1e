#!/usr/bin/python3
"""A FUSE file system for tests: BACKING's files, shown at MOUNT, whose operations misbehave on command.

    faultyfs.py BACKING MOUNT CTL

CTL is a file the test writes (outside the mount); its first word, read every 20 ms, is the mode:
  ok          every operation passes through to BACKING
  hang        writes, flushes (close(2)) and fsyncs never return (a dead NFS server behind a hard mount),
              until the mode changes or the file system is unmounted
  hangall     every operation, lookups and creates included, never returns (as above)
  crawl MS    each write takes MS milliseconds more (a disk far slower than the traffic)
  eio         writes fail with EIO
  enospc      writes fail with ENOSPC (a full disk)
The mount is up once it is in /proc/self/mountinfo. Runs until unmounted or killed; every waiting operation
ends with the process (the kernel aborts the connection).
"""
import errno
import os
import sys
import threading
import time

from fusepy import FUSE, FuseOSError, Operations

backing, mount, ctl = sys.argv[1], sys.argv[2], sys.argv[3]
state = {"mode": "ok", "arg": 0}
changed = threading.Condition()


def watch():
    while True:
        try:
            with open(ctl) as f:
                words = f.read().split()
        except OSError:
            words = []
        mode = words[0] if words else "ok"
        arg = int(words[1]) if len(words) > 1 else 0
        with changed:
            if (mode, arg) != (state["mode"], state["arg"]):
                state["mode"], state["arg"] = mode, arg
                changed.notify_all()
        time.sleep(0.02)


def hold(*modes):
    """Waits while the mode is one of modes."""
    with changed:
        while state["mode"] in modes:
            changed.wait()


def any_op():
    hold("hangall")


def write_op():
    hold("hang", "hangall")
    mode, arg = state["mode"], state["arg"]
    if mode == "crawl":
        time.sleep(arg / 1000.0)
    elif mode == "eio":
        raise FuseOSError(errno.EIO)
    elif mode == "enospc":
        raise FuseOSError(errno.ENOSPC)


class Faulty(Operations):
    use_ns = True

    def _p(self, path):
        return os.path.join(backing, path.lstrip("/"))

    def access(self, path, amode):
        any_op()
        if not os.access(self._p(path), amode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        any_op()
        try:
            st = os.lstat(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid")}
        d.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return d

    def readdir(self, path, fh):
        any_op()
        return [".", ".."] + os.listdir(self._p(path))

    def mkdir(self, path, mode):
        any_op()
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        any_op()
        os.rmdir(self._p(path))

    def unlink(self, path):
        any_op()
        try:
            os.unlink(self._p(path))
        except OSError as e:
            raise FuseOSError(e.errno)

    def chmod(self, path, mode):
        any_op()
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        any_op()
        os.chown(self._p(path), uid, gid)

    def utimens(self, path, times=None):
        any_op()
        os.utime(self._p(path), ns=times)

    def truncate(self, path, length, fh=None):
        any_op()
        os.truncate(self._p(path), length)

    def statfs(self, path):
        any_op()
        s = os.statvfs(self._p(path))
        return {k: getattr(s, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                           "f_files", "f_flag", "f_frsize", "f_namemax")}

    def create(self, path, mode, fi=None):
        any_op()
        try:
            return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except OSError as e:
            raise FuseOSError(e.errno)

    def open(self, path, flags):
        any_op()
        try:
            return os.open(self._p(path), flags & ~(os.O_CREAT | os.O_EXCL))
        except OSError as e:
            raise FuseOSError(e.errno)

    def read(self, path, size, offset, fh):
        any_op()
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        write_op()
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        hold("hang", "hangall")

    def fsync(self, path, datasync, fh):
        hold("hang", "hangall")

    def release(self, path, fh):
        os.close(fh)


threading.Thread(target=watch, daemon=True).start()
FUSE(Faulty(), mount, foreground=True, nothreads=False, big_writes=True, default_permissions=True)
