package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * An eventfd: the kick and call notifications of a virtqueue. {@link #signal()} adds one; {@link #drain()}
 * reads and resets the counter.
 *
 * <p>An eventfd received from a peer shares its open file, and so its O_NONBLOCK flag, with that peer: whatever we
 * set, the peer can clear it again. So nothing here relies on the flag. {@link #drain()} reads with
 * {@code preadv2(RWF_NOWAIT)}, which never waits whatever the flag says. A write has no such option on an eventfd
 * (Linux rejects RWF_NOWAIT on it with EOPNOTSUPP): a write of 1 waits while the counter stands at its limit,
 * 0xfffffffffffffffe, and only a peer that filled the counter on purpose gets it there. {@link #isFull()} tells
 * (poll reports POLLOUT exactly when a write of 1 would not wait) and {@link #drain()} releases a writer stuck on
 * it: the {@link EventFdWatchdog} does that for every thread that signals, within two of its periods, and
 * {@link #signal()} then says so.
 */
public final class EventFd extends Fd {
    private static final MethodHandle EVENTFD =
            Native.downcall("eventfd", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle PREADV2 =
            Native.downcall("preadv2", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT, C_LONG, C_INT));
    private static final MethodHandle PREADV2_UNCAPTURED = Native.downcallUncaptured("preadv2",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT, C_LONG, C_INT));
    private static final MethodHandle WRITE_UNCAPTURED = Native.downcallUncaptured("write",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_LONG));
    private static final MethodHandle POLL =
            Native.downcall("poll", FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, C_LONG, C_INT));
    private static final int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;
    private static final int RWF_NOWAIT = 0x8;
    private static final short POLLOUT = 0x4;
    private static final int EOPNOTSUPP = 95;

    /** Whether this kernel reads eventfds with RWF_NOWAIT (Linux 5.10 and later); else plain reads. */
    private static volatile boolean nowaitReads = true;

    /**
     * Per thread: the counter (8 bytes), an iovec for preadv2 naming it (16) and a pollfd (8), each sliced once:
     * nothing allocated per call (a slice is an object, made at each {@code asSlice}).
     */
    private record Scratch(MemorySegment counter, MemorySegment iov, MemorySegment pollfd) {}

    private static final ThreadLocal<Scratch> SCRATCH = ThreadLocal.withInitial(() -> {
        MemorySegment s = Arena.global().allocate(32, 8);
        s.set(ValueLayout.ADDRESS, 8, s.asSlice(0, 8));
        s.set(ValueLayout.JAVA_LONG, 16, 8L);
        return new Scratch(s.asSlice(0, 8), s.asSlice(8, 16), s.asSlice(24, 8));
    });

    private EventFd(int fd) {
        super(fd);
    }

    public static EventFd create() {
        try {
            return new EventFd(Native.check((int) EVENTFD.invokeExact(Native.errnoState(), 0,
                    EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Wraps an eventfd received from a peer (its flags are whatever the peer set). */
    public static EventFd adopt(int fd) {
        return new EventFd(fd);
    }

    /**
     * Adds one to the counter, waking whoever polls it. Returns true at once unless a peer cleared O_NONBLOCK and
     * filled the counter to its limit (see the class comment): then the write waits until the watchdog releases it,
     * and this returns false; the caller should stop signalling a peer that does that. (On a non-blocking eventfd a
     * full counter fails the write at once, harmlessly: its reader is awake already.)
     */
    public boolean signal() {
        MemorySegment w = SCRATCH.get().counter();
        w.set(ValueLayout.JAVA_LONG, 0, 1L);
        EventFdWatchdog.Slot slot = EventFdWatchdog.slot();
        slot.seq++;
        slot.writing = this;
        try {
            // Without errno capture first (see Native.downcallUncaptured): a driver kicks, a worker signals, per burst
            long n = (long) WRITE_UNCAPTURED.invokeExact(fd(), w, 8L);
            if (n != 8) {
                write(w); // again, capturing errno: EAGAIN (a full counter on a non-blocking eventfd) or a failure
            }
        } catch (Throwable t) {
            throw Native.rethrow(t);
        } finally {
            slot.writing = null;
        }
        if (slot.released) {
            slot.released = false;
            return false;
        }
        return true;
    }

    /** Reads and clears the counter; 0 if nothing was signalled. Never waits, whatever the descriptor's flags. */
    public long drain() {
        Scratch s = SCRATCH.get();
        if (nowaitReads) {
            try {
                // Without errno capture first (see Native.downcallUncaptured): a worker reads its kicks here
                long n = (long) PREADV2_UNCAPTURED.invokeExact(fd(), s.iov(), 1, -1L, RWF_NOWAIT);
                if (n != 8) {
                    n = (long) PREADV2.invokeExact(Native.errnoState(), fd(), s.iov(), 1, -1L, RWF_NOWAIT);
                }
                if (n == 8) {
                    return s.counter().get(ValueLayout.JAVA_LONG, 0);
                }
                int e = Native.lastErrno();
                if (n < 0 && (e == ErrnoException.EAGAIN || e == ErrnoException.EINTR)) {
                    return 0;
                }
                if (n < 0 && e != EOPNOTSUPP && e != ErrnoException.EINVAL) {
                    throw new ErrnoException("preadv2(eventfd)", e);
                }
                nowaitReads = false; // an old kernel: fall back to read(2), which obeys the descriptor's flag
            } catch (Throwable t) {
                throw Native.rethrow(t);
            }
        }
        long n = read(s.counter());
        return n == 8 ? s.counter().get(ValueLayout.JAVA_LONG, 0) : 0;
    }

    /** Whether the counter is at its limit, so that {@link #signal()} on a blocking descriptor would wait. */
    public boolean isFull() {
        MemorySegment p = SCRATCH.get().pollfd();
        p.set(ValueLayout.JAVA_INT, 0, fd());
        p.set(ValueLayout.JAVA_SHORT, 4, POLLOUT);
        p.set(ValueLayout.JAVA_SHORT, 6, (short) 0);
        try {
            int n = (int) POLL.invokeExact(Native.errnoState(), p, 1L, 0);
            Native.check(n, "poll(eventfd)");
            return (p.get(ValueLayout.JAVA_SHORT, 6) & POLLOUT) == 0;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Closes the descriptor, never while the watchdog uses its number (see {@link EventFdWatchdog}): a number closed
     * under the watchdog's poll and read could be the kernel's for another file by then (another VM's socket or
     * eventfd), whose bytes the read would take.
     */
    @Override
    public void close() {
        synchronized (this) {
            super.close();
        }
    }
}
