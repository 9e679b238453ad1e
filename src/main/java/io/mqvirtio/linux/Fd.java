package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;
import static io.mqvirtio.linux.Native.SIZE_T;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * An owned file descriptor. Closing is idempotent and thread-safe; after close, {@link #fd()} throws, so a
 * closed number is never reused by accident for a descriptor the kernel handed to someone else.
 */
public class Fd implements AutoCloseable {
    private static final MethodHandle CLOSE = Native.downcall("close", FunctionDescriptor.of(C_INT, C_POINTER, C_INT));
    private static final MethodHandle READ =
            Native.downcall("read", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, SIZE_T));
    private static final MethodHandle WRITE =
            Native.downcall("write", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, SIZE_T));
    private static final MethodHandle DUP = Native.downcall("dup", FunctionDescriptor.of(C_INT, C_POINTER, C_INT));
    private static final MethodHandle FCNTL =
            Native.downcallVariadic("fcntl", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT), 2);

    private static final MethodHandle FLOCK =
            Native.downcall("flock", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle POLL =
            Native.downcall("poll", FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, C_LONG, C_INT));
    private static final int O_DIRECTORY = 0x10000, LOCK_EX = 2, LOCK_NB = 4;

    /** poll(2) events, <bits/poll.h>. */
    public static final short POLLIN = 0x1, POLLOUT = 0x4, POLLERR = 0x8, POLLHUP = 0x10, POLLRDHUP = 0x2000;

    private static final MethodHandle OPEN = Native.downcallVariadic("open",
            FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, C_INT, C_INT), 2);

    /** open(2) flags, <bits/fcntl-linux.h>. */
    static final int O_RDONLY = 0, O_RDWR = 2, O_CLOEXEC = 0x80000;

    static final int F_GETFL = 3, F_SETFL = 4, O_NONBLOCK = 0x800, F_GETFD = 1, F_SETFD = 2, FD_CLOEXEC = 1;

    private final AtomicInteger fd;

    /** Takes ownership of {@code fd}. */
    public Fd(int fd) {
        if (fd < 0) {
            throw new IllegalArgumentException("negative fd " + fd);
        }
        this.fd = new AtomicInteger(fd);
    }

    /** Adopts a descriptor received from elsewhere (e.g. over SCM_RIGHTS). */
    public static Fd adopt(int fd) {
        return new Fd(fd);
    }

    /**
     * Opens {@code path} (open(2) is variadic: the mode after the flags), always close-on-exec; returns the raw
     * descriptor for the caller's own {@code Fd} subclass to take.
     */
    static int open(String path, int flags) {
        try (Arena a = Arena.ofConfined()) {
            int fd = (int) OPEN.invokeExact(Native.errnoState(), a.allocateFrom(path), flags | O_CLOEXEC, 0);
            return Native.check(fd, "open(" + path + ")");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Opens the directory {@code dir} and takes an exclusive {@code flock} on it, waiting at most {@code timeoutMillis}
     * for whoever holds one (another process, or another open of it in this one); closing the returned descriptor
     * releases it. For short critical sections on a directory's entries, without leaving a lock file behind. Anyone
     * who can open the directory can hold such a lock (another user, on /tmp), so the wait is bounded: past it, an
     * {@link ErrnoException} with EWOULDBLOCK.
     */
    public static Fd lockDirectory(String dir, long timeoutMillis) {
        Fd d = new Fd(open(dir, O_RDONLY | O_DIRECTORY));
        try {
            // saturating: timeoutMillis * 10^6 overflows from about 292 years on (Long.MAX_VALUE: -10^6, already past)
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, timeoutMillis));
            long pause = 1;
            while (true) {
                int r = (int) FLOCK.invokeExact(Native.errnoState(), d.fd(), LOCK_EX | LOCK_NB);
                if (r == 0) {
                    return d;
                }
                int e = Native.lastErrno();
                if (e != ErrnoException.EAGAIN && e != ErrnoException.EINTR) {
                    throw new ErrnoException("flock(" + dir + ")", e);
                }
                if (System.nanoTime() - deadline > 0) {
                    throw new ErrnoException("flock(" + dir + "): held by another process for more than "
                            + timeoutMillis + " ms", ErrnoException.EAGAIN);
                }
                Thread.sleep(pause);
                pause = Math.min(pause * 2, 20);
            }
        } catch (Throwable t) {
            d.close();
            if (t instanceof InterruptedException) {
                Thread.currentThread().interrupt();
                throw new ErrnoException("flock(" + dir + "): interrupted", ErrnoException.EINTR);
            }
            throw Native.rethrow(t);
        }
    }

    /**
     * poll(2) on this descriptor alone: the events of {@code events} (and POLLERR/POLLHUP) that are ready within
     * {@code timeoutMillis} (0: now; negative: no limit), or 0 if none.
     */
    public final int poll(int events, int timeoutMillis) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment p = a.allocate(8, 4);
            p.set(java.lang.foreign.ValueLayout.JAVA_INT, 0, fd());
            p.set(java.lang.foreign.ValueLayout.JAVA_SHORT, 4, (short) events);
            long deadline = System.nanoTime() + Math.max(0, timeoutMillis) * 1_000_000L;
            while (true) {
                int n = (int) POLL.invokeExact(Native.errnoState(), p, 1L, timeoutMillis);
                if (n >= 0) {
                    return n == 0 ? 0 : Short.toUnsignedInt(p.get(java.lang.foreign.ValueLayout.JAVA_SHORT, 6));
                }
                if (Native.lastErrno() != ErrnoException.EINTR) {
                    throw new ErrnoException("poll", Native.lastErrno());
                }
                if (timeoutMillis > 0) {
                    timeoutMillis = (int) Math.max(0, (deadline - System.nanoTime()) / 1_000_000L);
                }
            }
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public final int fd() {
        int v = fd.get();
        if (v < 0) {
            throw new IllegalStateException("fd already closed");
        }
        return v;
    }

    public final boolean isOpen() {
        return fd.get() >= 0;
    }

    /** A new descriptor for the same open file, owned by the caller. */
    public final Fd dup() {
        try {
            return new Fd(Native.check((int) DUP.invokeExact(Native.errnoState(), fd()), "dup"));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Reads into {@code buf}; returns the count, 0 at end of file, -1 if non-blocking and nothing is ready. */
    public final long read(MemorySegment buf) {
        try {
            long n;
            do {
                n = (long) READ.invokeExact(Native.errnoState(), fd(), buf, buf.byteSize());
            } while (n < 0 && Native.lastErrno() == ErrnoException.EINTR); // a signal the process handles
            return again(n, "read");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Writes from {@code buf}; returns the count, -1 if non-blocking and the write would block. */
    public final long write(MemorySegment buf) {
        try {
            long n;
            do {
                n = (long) WRITE.invokeExact(Native.errnoState(), fd(), buf, buf.byteSize());
            } while (n < 0 && Native.lastErrno() == ErrnoException.EINTR); // a signal the process handles
            return again(n, "write");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Maps EAGAIN to -1 and any other failure to an exception. */
    static long again(long n, String call) {
        if (n < 0) {
            int e = Native.lastErrno();
            if (e == ErrnoException.EAGAIN) {
                return -1;
            }
            throw new ErrnoException(call, e);
        }
        return n;
    }

    public final void setNonBlocking(boolean on) {
        try {
            int flags = Native.check((int) FCNTL.invokeExact(Native.errnoState(), fd(), F_GETFL, 0), "fcntl(F_GETFL)");
            int next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
            Native.check((int) FCNTL.invokeExact(Native.errnoState(), fd(), F_SETFL, next), "fcntl(F_SETFL)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** fcntl(2) with one int argument; returns its result (errors become {@link ErrnoException}). */
    protected final int fcntl(int cmd, int arg, String what) {
        try {
            return Native.check((int) FCNTL.invokeExact(Native.errnoState(), fd(), cmd, arg), what);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    public final boolean isNonBlocking() {
        try {
            int flags = Native.check((int) FCNTL.invokeExact(Native.errnoState(), fd(), F_GETFL, 0), "fcntl(F_GETFL)");
            return (flags & O_NONBLOCK) != 0;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    @Override
    public void close() {
        int v = fd.getAndSet(-1);
        if (v >= 0) {
            try {
                // Linux releases the descriptor even when close reports an error; nothing to retry.
                int ignored = (int) CLOSE.invokeExact(Native.errnoState(), v);
            } catch (Throwable t) {
                throw Native.rethrow(t);
            }
        }
    }

    @Override
    public String toString() {
        return getClass().getSimpleName() + "[fd=" + fd.get() + "]";
    }
}
