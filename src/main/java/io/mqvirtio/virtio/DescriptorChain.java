package io.mqvirtio.virtio;

import java.lang.foreign.MemorySegment;

/**
 * One descriptor chain as the device popped it: its head index, then its buffers, readable ones first and writable
 * ones after (the order the spec requires). Every buffer was checked to lie inside guest memory when popped.
 *
 * <p>A chain object is reused for every pop (the data path allocates nothing); a worker owns its chains.
 */
public final class DescriptorChain {
    private final int capacity;
    private final long[] gpa;
    private final MemorySegment[] region; // the mapping of the region each buffer lies in
    private final long[] regionOffset;          // the buffer's offset in that region
    private final int[] len;
    private int head = -1;
    private int id = -1;
    private int slots;
    private int count;
    private int readable;
    private long readableBytes;
    private long writableBytes;
    private boolean indirect;

    public DescriptorChain(int capacity) {
        this.capacity = capacity;
        this.gpa = new long[capacity];
        this.region = new MemorySegment[capacity];
        this.regionOffset = new long[capacity];
        this.len = new int[capacity];
    }

    void reset(int headIndex) {
        head = headIndex;
        id = headIndex;
        slots = 0;
        count = 0;
        readable = 0;
        readableBytes = 0;
        writableBytes = 0;
        indirect = false;
    }

    /** Set by the ring that popped the chain (packed: the id in its last descriptor, its descriptor count). */
    void identify(int bufferId, int ringSlots) {
        id = bufferId;
        slots = ringSlots;
    }

    void markIndirect() {
        indirect = true;
    }

    /** Adds one buffer; returns false when the chain object is full. */
    boolean add(long guestAddr, MemorySegment regionMapping, long regionOffset, int length, boolean writable) {
        if (count == capacity) {
            return false;
        }
        gpa[count] = guestAddr;
        region[count] = regionMapping;
        this.regionOffset[count] = regionOffset;
        len[count] = length;
        count++;
        if (writable) {
            writableBytes += Integer.toUnsignedLong(length);
        } else {
            readable++;
            readableBytes += Integer.toUnsignedLong(length);
        }
        return true;
    }

    public int capacity() {
        return capacity;
    }

    /** The head descriptor's index (split rings): what goes back in the used ring. */
    public int head() {
        return head;
    }

    /** The chain's buffer id: what the device returns in the used ring (split: the head's index). */
    public int id() {
        return id;
    }

    /**
     * The ring entries the chain takes (a packed ring's used index moves on by these; with an indirect table the
     * whole chain takes one).
     */
    public int slots() {
        return slots;
    }

    /** Number of buffers (descriptors other than an indirect table pointer). */
    public int count() {
        return count;
    }

    public int readableCount() {
        return readable;
    }

    public int writableCount() {
        return count - readable;
    }

    public long readableBytes() {
        return readableBytes;
    }

    public long writableBytes() {
        return writableBytes;
    }

    public boolean isIndirect() {
        return indirect;
    }

    public boolean isWritable(int i) {
        return i >= readable;
    }

    public long guestAddress(int i) {
        return gpa[checkIndex(i)];
    }

    /** This process's address of buffer {@code i}, for iovecs. */
    public long hostAddress(int i) {
        return region[checkIndex(i)].address() + regionOffset[i];
    }

    public int length(int i) {
        return len[checkIndex(i)];
    }

    /** Buffer {@code i} as a bounds-checked slice of guest memory. */
    public MemorySegment segment(int i) {
        return region[checkIndex(i)].asSlice(regionOffset[i], Integer.toUnsignedLong(len[i]));
    }

    /**
     * Copies up to {@code dst.byteSize()} bytes of the readable part, starting {@code offset} bytes in, into
     * {@code dst}; returns the count copied.
     */
    public long readFrom(long offset, MemorySegment dst) {
        return copy(0, readable, offset, dst, false);
    }

    /**
     * Copies {@code src} into the writable part, starting {@code offset} bytes into it, never past the writable
     * buffers' lengths; returns the count copied.
     */
    public long writeTo(long offset, MemorySegment src) {
        return copy(readable, count, offset, src, true);
    }

    /**
     * Copies up to {@code dst.byteSize()} bytes of the writable part (what the device wrote there), starting
     * {@code offset} bytes in, into {@code dst}; returns the count copied.
     */
    public long readWritten(long offset, MemorySegment dst) {
        return copy(readable, count, offset, dst, false);
    }

    /**
     * Copies between {@code other} and buffers {@code from..to-1} taken as one byte range, starting {@code offset}
     * bytes into that range, into the buffers if {@code intoChain}; never past a buffer's length.
     */
    private long copy(int from, int to, long offset, MemorySegment other, boolean intoChain) {
        long done = 0;
        long skip = offset;
        for (int i = from; i < to && done < other.byteSize(); i++) {
            long l = Integer.toUnsignedLong(len[i]);
            if (skip >= l) {
                skip -= l;
                continue;
            }
            long n = Math.min(l - skip, other.byteSize() - done);
            if (intoChain) {
                MemorySegment.copy(other, done, region[i], regionOffset[i] + skip, n);
            } else {
                MemorySegment.copy(region[i], regionOffset[i] + skip, other, done, n);
            }
            done += n;
            skip = 0;
        }
        return done;
    }

    private int checkIndex(int i) {
        if (i < 0 || i >= count) {
            throw new IndexOutOfBoundsException("buffer " + i + " of " + count);
        }
        return i;
    }

    @Override
    public String toString() {
        return "DescriptorChain[head=" + head + " buffers=" + count + " readable=" + readableBytes + "B writable="
                + writableBytes + "B" + (indirect ? " indirect" : "") + "]";
    }
}
