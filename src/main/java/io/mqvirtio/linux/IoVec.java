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
 * A reusable off-heap {@code struct iovec} array for {@code readv}/{@code writev}: the zero-copy data path. A
 * worker fills it with the segments of one descriptor chain (pointing straight into mapped guest memory), then
 * moves one packet between those segments and a TAP queue in a single call. Nothing is allocated per packet.
 *
 * <p>Not thread-safe: each worker owns its own. The entries hold raw addresses, so the memory they point at must
 * stay mapped until the call returns (guest memory is only unmapped after the workers are paused).
 */
public final class IoVec {
    private static final MethodHandle READV =
            Native.downcall("readv", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle WRITEV =
            Native.downcall("writev", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle READ_AT_UNCAPTURED = Native.downcallUncaptured("read",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_LONG, C_LONG));
    private static final MethodHandle POLL_UNCAPTURED = Native.downcallUncaptured("poll",
            FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER, C_LONG, C_INT));
    /** Per thread: a struct pollfd for {@link #read}'s look at an empty queue, made once. */
    private static final ThreadLocal<MemorySegment> POLLFD = ThreadLocal.withInitial(() -> Arena.global().allocate(8, 4));
    private static final MethodHandle WRITEV_UNCAPTURED = Native.downcallUncaptured("writev",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT));
    /** read(2) with the buffer as an address (a pointer is passed as a long is on this ABI). */
    private static final MethodHandle READ_AT =
            Native.downcall("read", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_LONG, C_LONG));

    /** struct iovec (readv(2), <bits/types/struct_iovec.h>): void *iov_base @0, size_t iov_len @8. */
    private static final long ENTRY = 16, BASE = 0, LEN = 8;
    /** IOV_MAX (<limits.h>): readv/writev refuse more entries with EINVAL. */
    public static final int IOV_MAX = 1024;

    private final int capacity;
    /** Freed by an automatic arena: an IoVec lives as long as its worker, and closing it needs no ceremony. */
    private final MemorySegment array;
    private int count;
    private long totalBytes;

    public IoVec(int capacity) {
        if (capacity <= 0 || capacity > IOV_MAX) {
            throw new IllegalArgumentException("iovec capacity must be 1.." + IOV_MAX + ": " + capacity);
        }
        this.capacity = capacity;
        this.array = Arena.ofAuto().allocate(ENTRY * capacity, 8);
    }

    public void clear() {
        count = 0;
        totalBytes = 0;
    }

    /** Appends all of {@code seg}; false (and nothing added) when the array is full. */
    public boolean add(MemorySegment seg) {
        return add(seg, 0, seg.byteSize());
    }

    /**
     * Appends {@code length} bytes of {@code seg} from {@code offset}, bounds-checked against {@code seg}, without
     * slicing it (no allocation). False (and nothing added) when the array is full.
     */
    public boolean add(MemorySegment seg, long offset, long length) {
        if (!seg.isNative()) {
            throw new IllegalArgumentException("readv/writev need native memory; a heap segment has no fixed address");
        }
        if (offset < 0 || length < 0 || offset > seg.byteSize() - length) {
            throw new IndexOutOfBoundsException("slice [" + offset + ", +" + length + ") of a segment of "
                    + seg.byteSize() + " bytes");
        }
        return addRaw(seg.address() + offset, length);
    }

    /**
     * Appends a raw range of this process's memory: for addresses a caller already checked (guest buffers that
     * {@code GuestMemory} translated), where making a segment per buffer would allocate on the data path.
     * False (and nothing added) when the array is full.
     */
    public boolean addRaw(long address, long length) {
        if (length < 0) {
            throw new IllegalArgumentException("negative iovec length " + length);
        }
        if (count == capacity) {
            return false;
        }
        long at = ENTRY * count;
        array.set(C_LONG, at + BASE, address);
        array.set(C_LONG, at + LEN, length);
        count++;
        totalBytes += length;
        return true;
    }

    /**
     * All of this process's memory, to copy from and to the entries' raw addresses without a segment per entry. The
     * entries' ranges were checked by whoever added them (guest buffers: when the device popped the chain).
     */
    private static final MemorySegment ALL = MemorySegment.NULL.reinterpret(Long.MAX_VALUE);

    /**
     * Gathers the entries' bytes, in order, into {@code dst} from {@code dstOffset}, at most {@code max} of them
     * (what a backend without a file descriptor does instead of writev); returns the count copied.
     */
    public long copyTo(MemorySegment dst, long dstOffset, long max) {
        long at = 0;
        for (int i = 0; i < count && at < max; i++) {
            long n = Math.min(length(i), max - at);
            MemorySegment.copy(ALL, address(i), dst, dstOffset + at, n);
            at += n;
        }
        return at;
    }

    /**
     * Like {@link #copyTo(MemorySegment, long, long)}, from {@code skip} bytes into the entries' bytes taken as one
     * range (a frame without its virtio-net header).
     */
    public long copyTo(long skip, MemorySegment dst, long dstOffset, long max) {
        long at = 0;
        long left = skip;
        for (int i = 0; i < count && at < max; i++) {
            long l = length(i);
            if (left >= l) {
                left -= l;
                continue;
            }
            long n = Math.min(l - left, max - at);
            MemorySegment.copy(ALL, address(i) + left, dst, dstOffset + at, n);
            left = 0;
            at += n;
        }
        return at;
    }

    /**
     * Scatters {@code n} bytes of {@code src} from {@code srcOffset} into the entries, in order, never past them
     * (instead of readv); returns the count copied.
     */
    public long copyFrom(MemorySegment src, long srcOffset, long n) {
        long at = 0;
        for (int i = 0; i < count && at < n; i++) {
            long c = Math.min(length(i), n - at);
            MemorySegment.copy(src, srcOffset + at, ALL, address(i), c);
            at += c;
        }
        return at;
    }

    /**
     * Copies {@code n} bytes at this process's address {@code address} (a guest buffer the caller checked, as an
     * entry's) into {@code dst} from {@code dstOffset}: what {@link #copyTo} does for one entry, with no iovec.
     */
    public static void copy(long address, MemorySegment dst, long dstOffset, long n) {
        MemorySegment.copy(ALL, address, dst, dstOffset, n);
    }

    /** Entry {@code i}'s address. */
    public long address(int i) {
        return array.get(C_LONG, ENTRY * checkEntry(i) + BASE);
    }

    /** Entry {@code i}'s length. */
    public long length(int i) {
        return array.get(C_LONG, ENTRY * checkEntry(i) + LEN);
    }

    private int checkEntry(int i) {
        if (i < 0 || i >= count) {
            throw new IndexOutOfBoundsException("iovec entry " + i + " of " + count);
        }
        return i;
    }

    public int count() {
        return count;
    }

    public int capacity() {
        return capacity;
    }

    /** The sum of the lengths of the entries. */
    public long totalBytes() {
        return totalBytes;
    }

    /**
     * Reads into the entries in order: one packet from a TAP queue. Returns the byte count, 0 at end of file, -1
     * if {@code fd} is non-blocking and nothing is ready.
     */
    public static long readv(Fd fd, IoVec v) {
        try {
            long n;
            do {
                n = (long) READV.invokeExact(Native.errnoState(), fd.fd(), v.array, v.count);
            } while (n < 0 && Native.lastErrno() == ErrnoException.EINTR);
            return Fd.again(n, "readv");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Reads one packet from a TAP queue into {@code length} bytes at this process's {@code address} (a guest buffer
     * the caller checked, as an entry's): {@link #readv} of a one-entry iovec, without the kernel importing one.
     */
    public static long read(Fd fd, long address, long length) {
        try {
            // Without errno capture first (see Native.downcallUncaptured): a worker reads each RX frame here, and
            // each drain ends with a read that finds the queue empty (EAGAIN). That is told by poll, which needs no
            // errno: nothing readable and no error is an empty queue. Otherwise (a frame came meanwhile, or the read
            // failed for another reason) the read is made again, capturing errno: a read that failed read nothing.
            // A frame that came between the read and the poll is read the same way, once.
            long n = -1;
            for (int tries = 0; tries < 2 && n < 0; tries++) {
                n = (long) READ_AT_UNCAPTURED.invokeExact(fd.fd(), address, length);
                if (n < 0) {
                    MemorySegment p = POLLFD.get();
                    p.set(ValueLayout.JAVA_INT, 0, fd.fd());
                    p.set(ValueLayout.JAVA_SHORT, 4, Fd.POLLIN);
                    p.set(ValueLayout.JAVA_SHORT, 6, (short) 0);
                    int ready = (int) POLL_UNCAPTURED.invokeExact(p, 1L, 0);
                    if (ready == 0) {
                        return -1;
                    }
                    if (ready < 0 || p.get(ValueLayout.JAVA_SHORT, 6) != Fd.POLLIN) {
                        break; // an error: errno says which
                    }
                    // A frame waits: it came after the read found none, or the read failed for a fault at the buffer
                    // (EFAULT: memory the frontend took away, and the kernel dropped that frame) with more queued.
                    // Touched before it is read into again: such memory faults here (SIGBUS, an InternalError), once,
                    // instead of each read dropping one more frame.
                    touch(address, length);
                }
            }
            while (n < 0) {
                n = (long) READ_AT.invokeExact(Native.errnoState(), fd.fd(), address, length);
                if (n >= 0 || Native.lastErrno() != ErrnoException.EINTR) {
                    break;
                }
            }
            return Fd.again(n, "read");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Reads a byte of each page of {@code length} bytes at {@code address}: a page that is gone faults here. */
    private static void touch(long address, long length) {
        byte b = 0;
        for (long at = address & -4096L; at < address + length; at += 4096) {
            b |= ALL.get(ValueLayout.JAVA_BYTE, Math.max(at, address));
        }
        touched = b;
    }

    /** What {@link #touch} read (kept, so the reads are made). */
    @SuppressWarnings("unused")
    private static volatile byte touched;

    /**
     * Writes the entries in order as one unit: one packet to a TAP queue. Returns the byte count (a stream may
     * take less than {@link #totalBytes()}; a TAP takes the whole packet or nothing), -1 if {@code fd} is
     * non-blocking and full. Captures errno: a worker's data path writes with {@link #tryWritev} first.
     */
    public static long writev(Fd fd, IoVec v) {
        try {
            long n;
            do {
                n = (long) WRITEV.invokeExact(Native.errnoState(), fd.fd(), v.array, v.count);
            } while (n < 0 && Native.lastErrno() == ErrnoException.EINTR);
            return Fd.again(n, "writev");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * {@link #writev} without errno capture (see Native.downcallUncaptured): a worker writes each TX frame here.
     * Returns the byte count, or -1 where the write failed for any reason (a TAP then wrote nothing): the caller
     * makes it again with {@link #writev} to learn why.
     */
    public static long tryWritev(Fd fd, IoVec v) {
        try {
            long n = (long) WRITEV_UNCAPTURED.invokeExact(fd.fd(), v.array, v.count);
            return n < 0 ? -1 : n;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}
