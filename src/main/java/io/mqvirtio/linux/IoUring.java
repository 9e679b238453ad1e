package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.VarHandle;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * An io_uring instance (io_uring_setup(2), io_uring_enter(2)) through the FFM API, for one thread: submission
 * entries are prepared with {@link #prepare}, handed to the kernel with one {@link #submit} for the whole burst, and
 * their completions read with {@link #reap}. The rings are the kernel's, mapped into this process; the only fields
 * read back from them are the kernel's indexes (with acquire) and completions, each checked against the ring's size.
 *
 * <p>Not thread-safe: one owner submits and reaps (the queue pair's worker, or a bench loop). Closing unmaps the
 * rings and closes the instance; the kernel finishes or cancels what was in flight.
 */
public final class IoUring implements AutoCloseable {
    private static final long SYS_IO_URING_SETUP = 425;
    private static final long SYS_IO_URING_ENTER = 426;
    private static final MethodHandle SETUP = Native.downcallVariadic("syscall",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_LONG, C_INT, C_POINTER), 1);
    private static final MethodHandle ENTER = Native.downcallVariadic("syscall",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_LONG, C_INT, C_INT, C_INT, C_INT, C_POINTER, C_LONG), 1);
    private static final MethodHandle ENTER_UNCAPTURED = Native.downcallVariadicUncaptured("syscall",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_LONG, C_INT, C_INT, C_INT, C_INT, C_POINTER, C_LONG), 1);
    private static final long SYS_IO_URING_REGISTER = 427;
    private static final MethodHandle REGISTER = Native.downcallVariadic("syscall",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_LONG, C_INT, C_INT, C_POINTER, C_INT), 1);
    private static final int REGISTER_BUFFERS = 0;
    private static final int REGISTER_FILES = 2;
    /** IOSQE_FIXED_FILE: the entry's fd is an index into the registered files. */
    public static final byte SQE_FIXED_FILE = 1;
    /**
     * IOSQE_IO_LINK: the next entry starts only after this one completed in full; if this one fails (a negative
     * result, or for a read or write fewer bytes than asked), the rest of the link completes with -ECANCELED unstarted.
     */
    public static final byte SQE_IO_LINK = 4;
    /** RWF_NOWAIT, an entry's read/write flag: a read that would wait completes with -EAGAIN instead of waiting armed. */
    public static final int RWF_NOWAIT = 8;

    public static final byte OP_NOP = 0;
    public static final byte OP_READV = 1;
    public static final byte OP_WRITEV = 2;
    public static final byte OP_READ_FIXED = 4;
    public static final byte OP_WRITE_FIXED = 5;
    public static final byte OP_READ = 22;
    public static final byte OP_WRITE = 23;
    private static final int ENTER_GETEVENTS = 1;
    private static final int FEAT_SINGLE_MMAP = 1;
    /** IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER: one thread submits; no IPI to run task work. */
    private static final int SETUP_FLAGS = (1 << 8) | (1 << 12);
    private static final int SETUP_DEFER_TASKRUN = 1 << 13;
    private static final long OFF_SQ_RING = 0;
    private static final long OFF_CQ_RING = 0x8000000L;
    private static final long OFF_SQES = 0x10000000L;
    private static final int SQE_SIZE = 64;
    private static final int CQE_SIZE = 16;
    private static final VarHandle INT = ValueLayout.JAVA_INT.varHandle();

    private final Fd fd;
    private final Mmap sqRing;
    private final Mmap cqRing; // the same mapping as sqRing with FEAT_SINGLE_MMAP
    private final Mmap sqes;
    private final MemorySegment sqHead;
    private final MemorySegment sqTail;
    private final MemorySegment cqHead;
    private final MemorySegment cqTail;
    private final MemorySegment cqes;
    private final int sqMask;
    private final int sqEntries;
    private final int cqMask;
    private int tail;      // the next SQ tail this owner publishes
    private int published; // the SQ tail the kernel has been told of
    private final AtomicBoolean closed = new AtomicBoolean();

    private IoUring(Fd fd, Mmap sqRing, Mmap cqRing, Mmap sqes, MemorySegment params) {
        this.fd = fd;
        this.sqRing = sqRing;
        this.cqRing = cqRing;
        this.sqes = sqes;
        this.sqEntries = params.get(ValueLayout.JAVA_INT, 0);
        int cqEntries = params.get(ValueLayout.JAVA_INT, 4);
        MemorySegment sq = sqRing.segment();
        MemorySegment cq = cqRing.segment();
        // io_sqring_offsets at 40, io_cqring_offsets at 80 (include/uapi/linux/io_uring.h)
        this.sqHead = sq.asSlice(params.get(ValueLayout.JAVA_INT, 40), 4);
        this.sqTail = sq.asSlice(params.get(ValueLayout.JAVA_INT, 44), 4);
        this.sqMask = sq.get(ValueLayout.JAVA_INT, params.get(ValueLayout.JAVA_INT, 48));
        MemorySegment array = sq.asSlice(params.get(ValueLayout.JAVA_INT, 64), 4L * sqEntries);
        this.cqHead = cq.asSlice(params.get(ValueLayout.JAVA_INT, 80), 4);
        this.cqTail = cq.asSlice(params.get(ValueLayout.JAVA_INT, 84), 4);
        this.cqMask = cq.get(ValueLayout.JAVA_INT, params.get(ValueLayout.JAVA_INT, 88));
        this.cqes = cq.asSlice(params.get(ValueLayout.JAVA_INT, 100), (long) CQE_SIZE * cqEntries);
        if (Integer.bitCount(sqEntries) != 1 || sqMask != sqEntries - 1 || Integer.bitCount(cqEntries) != 1
                || cqMask != cqEntries - 1 || sqes.size() < (long) SQE_SIZE * sqEntries) {
            throw new IllegalStateException("io_uring_setup answered rings this class cannot use: sq " + sqEntries
                    + "/" + sqMask + ", cq " + cqEntries + "/" + cqMask);
        }
        for (int i = 0; i < sqEntries; i++) {
            array.setAtIndex(ValueLayout.JAVA_INT, i, i); // slot i holds SQE i, always
        }
        this.tail = (int) INT.getAcquire(sqTail, 0L);
        this.published = tail;
    }

    /** A ring of at least {@code entries} submission slots (a power of two up to 4096). */
    public static IoUring create(int entries) {
        return create(entries, false);
    }

    /**
     * The same; {@code deferTaskrun}: IORING_SETUP_DEFER_TASKRUN (Linux 6.1), the work io_uring does in this thread's
     * context (a linked entry's start after the one before it completed) runs only in {@link #submit} with a wait,
     * from a list of the ring's own, instead of as the thread's task work.
     */
    public static IoUring create(int entries, boolean deferTaskrun) {
        if (entries < 1 || entries > 4096) {
            throw new IllegalArgumentException("io_uring entries must be in 1..4096, got " + entries);
        }
        MemorySegment params = Arena.ofAuto().allocate(120, 8);
        params.set(ValueLayout.JAVA_INT, 8, SETUP_FLAGS | (deferTaskrun ? SETUP_DEFER_TASKRUN : 0));
        int ringFd;
        try {
            ringFd = (int) Native.check((long) SETUP.invokeExact(Native.errnoState(), SYS_IO_URING_SETUP, entries, params),
                    "io_uring_setup");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
        Fd fd = new Fd(ringFd);
        Mmap sq = null;
        Mmap cq = null;
        Mmap sqes = null;
        try {
            int sqEntries = params.get(ValueLayout.JAVA_INT, 0);
            int cqEntries = params.get(ValueLayout.JAVA_INT, 4);
            int features = params.get(ValueLayout.JAVA_INT, 20);
            long sqSize = params.get(ValueLayout.JAVA_INT, 64) + 4L * sqEntries;
            long cqSize = params.get(ValueLayout.JAVA_INT, 100) + (long) CQE_SIZE * cqEntries;
            if ((features & FEAT_SINGLE_MMAP) != 0) {
                sq = Mmap.shared(fd, OFF_SQ_RING, Math.max(sqSize, cqSize));
                cq = sq;
            } else {
                sq = Mmap.shared(fd, OFF_SQ_RING, sqSize);
                cq = Mmap.shared(fd, OFF_CQ_RING, cqSize);
            }
            sqes = Mmap.shared(fd, OFF_SQES, (long) SQE_SIZE * sqEntries);
            return new IoUring(fd, sq, cq, sqes, params);
        } catch (RuntimeException e) {
            if (sqes != null) {
                sqes.close();
            }
            if (cq != null && cq != sq) {
                cq.close();
            }
            if (sq != null) {
                sq.close();
            }
            fd.close();
            throw e;
        }
    }

    /** Why io_uring cannot be used here (no such system call, disabled by sysctl, refused), or null. */
    public static String unavailable() {
        try (IoUring r = create(2)) {
            return null;
        } catch (ErrnoException e) {
            return e.getMessage() + (e.errno() == ErrnoException.EPERM ? " (kernel.io_uring_disabled?)" : "");
        } catch (RuntimeException e) {
            return e.toString();
        }
    }

    /** Submission slots. */
    public int capacity() {
        return sqEntries;
    }

    /** Slots free for {@link #prepare} before the next {@link #submit}. */
    public int free() {
        return sqEntries - (tail - (int) INT.getAcquire(sqHead, 0L));
    }

    /**
     * Fills the next submission entry: {@code op} on {@code target} with buffer (or iovec array) {@code addr} of
     * {@code len} bytes (or entries) at file offset {@code offset} (-1: the file's position, as read/write do);
     * {@code userData} comes back with its completion. False when the ring is full (submit first).
     */
    public boolean prepare(byte op, int target, long addr, int len, long offset, long userData) {
        return prepare(op, (byte) 0, target, addr, len, offset, 0, userData);
    }

    /**
     * The same with entry flags ({@link #SQE_FIXED_FILE}: {@code target} indexes the registered files) and, for the
     * fixed-buffer operations, the index of a registered buffer that [addr, addr+len) lies in.
     */
    public boolean prepare(byte op, byte flags, int target, long addr, int len, long offset, int bufIndex,
                           long userData) {
        return prepare(op, flags, target, addr, len, offset, bufIndex, 0, userData);
    }

    /** The same with the read/write flags of the entry ({@link #RWF_NOWAIT}). */
    public boolean prepare(byte op, byte flags, int target, long addr, int len, long offset, int bufIndex, int rwFlags,
                           long userData) {
        if (free() <= 0) {
            return false;
        }
        // offsets into the whole array, no slice: a slice is an object per entry
        MemorySegment e = sqes.segment();
        long b = (long) (tail & sqMask) * SQE_SIZE;
        for (long k = 0; k < SQE_SIZE; k += 8) {
            e.set(ValueLayout.JAVA_LONG, b + k, 0L);
        }
        e.set(ValueLayout.JAVA_BYTE, b, op);
        e.set(ValueLayout.JAVA_BYTE, b + 1, flags);
        e.set(ValueLayout.JAVA_INT, b + 4, target);
        e.set(ValueLayout.JAVA_SHORT, b + 40, (short) bufIndex);
        e.set(ValueLayout.JAVA_LONG, b + 8, offset);
        e.set(ValueLayout.JAVA_LONG, b + 16, addr);
        e.set(ValueLayout.JAVA_INT, b + 24, len);
        e.set(ValueLayout.JAVA_INT, b + 28, rwFlags);
        e.set(ValueLayout.JAVA_LONG, b + 32, userData);
        tail++;
        return true;
    }

    /**
     * Publishes the prepared entries and enters the kernel once: it starts them all and, with {@code waitFor > 0},
     * returns when at least that many completions are there. Returns how many entries the kernel took.
     */
    public int submit(int waitFor) {
        int n = tail - published;
        INT.setRelease(sqTail, 0L, tail);
        published = tail;
        if (n == 0 && waitFor == 0) {
            return 0;
        }
        try {
            // Without errno capture first (see Native.downcallUncaptured): a worker enters here for each TX batch.
            // A call that failed took nothing (or failed the wait after taking nothing), so it is made again.
            long r = (long) ENTER_UNCAPTURED.invokeExact(SYS_IO_URING_ENTER, fd.fd(), n, waitFor,
                    waitFor > 0 ? ENTER_GETEVENTS : 0, MemorySegment.NULL, 0L);
            while (r < 0) {
                // A signal (serve handles SIGHUP and SIGTERM, on whichever thread the kernel picks) ends a wait with
                // EINTR only where nothing was submitted by that call (the kernel answers the count it took
                // otherwise), so trying again submits nothing twice.
                r = (long) ENTER.invokeExact(Native.errnoState(), SYS_IO_URING_ENTER, fd.fd(), n, waitFor,
                        waitFor > 0 ? ENTER_GETEVENTS : 0, MemorySegment.NULL, 0L);
                if (r >= 0 || Native.lastErrno() != ErrnoException.EINTR || waitFor == 0) {
                    break;
                }
            }
            return (int) Native.check(r, "io_uring_enter");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Reads up to {@code max} completions: their user data and results (bytes moved, or -errno) into the arrays;
     * returns how many. Their slots go back to the kernel.
     */
    public int reap(long[] userData, int[] result, int max) {
        int head = (int) INT.getOpaque(cqHead, 0L);
        int ready = (int) INT.getAcquire(cqTail, 0L) - head;
        if (ready < 0 || ready > cqMask + 1) {
            throw new IllegalStateException("io_uring completion ring indexes out of order: head " + head + ", "
                    + ready + " ready");
        }
        int n = Math.min(ready, Math.min(max, Math.min(userData.length, result.length)));
        for (int i = 0; i < n; i++) {
            long at = (long) ((head + i) & cqMask) * CQE_SIZE;
            userData[i] = cqes.get(ValueLayout.JAVA_LONG, at);
            result[i] = cqes.get(ValueLayout.JAVA_INT, at + 8);
        }
        INT.setRelease(cqHead, 0L, head + n);
        return n;
    }

    /** Registers {@code fds} (io_uring_register IORING_REGISTER_FILES): entries then name them by index. */
    public void registerFiles(int... fds) {
        MemorySegment a = Arena.ofAuto().allocate(4L * fds.length, 4);
        for (int i = 0; i < fds.length; i++) {
            a.setAtIndex(ValueLayout.JAVA_INT, i, fds[i]);
        }
        register(REGISTER_FILES, a, fds.length, "IORING_REGISTER_FILES");
    }

    /** Registers {@code buffers} (IORING_REGISTER_BUFFERS): the kernel pins them; fixed operations name them. */
    public void registerBuffers(MemorySegment... buffers) {
        MemorySegment iov = Arena.ofAuto().allocate(16L * buffers.length, 8);
        for (int i = 0; i < buffers.length; i++) {
            iov.set(ValueLayout.JAVA_LONG, 16L * i, buffers[i].address());
            iov.set(ValueLayout.JAVA_LONG, 16L * i + 8, buffers[i].byteSize());
        }
        register(REGISTER_BUFFERS, iov, buffers.length, "IORING_REGISTER_BUFFERS");
    }

    private void register(int opcode, MemorySegment arg, int n, String what) {
        try {
            Native.check((long) REGISTER.invokeExact(Native.errnoState(), SYS_IO_URING_REGISTER, fd.fd(), opcode, arg, n),
                    "io_uring_register " + what);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    @Override
    public void close() {
        if (closed.compareAndSet(false, true)) {
            sqes.close();
            if (cqRing != sqRing) {
                cqRing.close();
            }
            sqRing.close();
            fd.close();
        }
    }
}
