package io.mqvirtio.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * The split virtqueue's memory layout (VIRTIO 1.3, 2.7): offsets and sizes of the descriptor table, the available
 * ring and the used ring, and the little-endian accessors both sides use. Described once, here.
 *
 * <pre>
 * descriptor (16 bytes, align 16): le64 addr | le32 len | le16 flags | le16 next
 * avail (align 2):  le16 flags | le16 idx | le16 ring[N] | le16 used_event
 * used  (align 4):  le16 flags | le16 idx | {le32 id, le32 len} ring[N] | le16 avail_event
 * </pre>
 */
public final class SplitRing {
    public static final int MAX_SIZE = 32768;

    public static final int DESC_SIZE = 16;
    public static final int DESC_ADDR = 0, DESC_LEN = 8, DESC_FLAGS = 12, DESC_NEXT = 14;
    public static final int DESC_F_NEXT = 1, DESC_F_WRITE = 2, DESC_F_INDIRECT = 4;

    public static final int AVAIL_FLAGS = 0, AVAIL_IDX = 2, AVAIL_RING = 4;
    public static final int AVAIL_F_NO_INTERRUPT = 1;

    public static final int USED_FLAGS = 0, USED_IDX = 2, USED_RING = 4, USED_ELEM_SIZE = 8;
    public static final int USED_F_NO_NOTIFY = 1;

    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** Acquire/release access to the ring indexes (coordinates: segment, offset). */
    static final VarHandle U16_VH = U16.varHandle();

    private SplitRing() {}

    public static long descTableBytes(int size) {
        return (long) DESC_SIZE * size;
    }

    public static long availBytes(int size) {
        return 6L + 2L * size;
    }

    public static long usedBytes(int size) {
        return 6L + 8L * size;
    }

    /** Offset of {@code used_event} in the avail ring. */
    static long usedEventOffset(int size) {
        return AVAIL_RING + 2L * size;
    }

    /** Offset of {@code avail_event} in the used ring. */
    static long availEventOffset(int size) {
        return USED_RING + 8L * size;
    }

    public static boolean isValidSize(int size) {
        return size > 0 && size <= MAX_SIZE && Integer.bitCount(size) == 1;
    }

    /**
     * Where a driver that puts one ring in one contiguous area places its parts: descriptors at 0, avail right after,
     * used at the next 4096 boundary (the legacy layout; any aligned placement is valid).
     */
    public record Layout(long descOffset, long availOffset, long usedOffset, long totalBytes) {
        public static Layout contiguous(int size) {
            long avail = descTableBytes(size);
            long used = align(avail + availBytes(size), 4096);
            return new Layout(0, avail, used, align(used + usedBytes(size), 4096));
        }
    }

    static long align(long v, long a) {
        return (v + a - 1) & -a;
    }

    /** vring_need_event (VIRTIO 1.3, 2.7.10): has {@code event} been crossed going from {@code old} to {@code now}? */
    public static boolean needEvent(int event, int now, int old) {
        return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
    }

    static int getU16Acquire(MemorySegment s, long off) {
        return Short.toUnsignedInt((short) U16_VH.getAcquire(s, off));
    }

    static void setU16Release(MemorySegment s, long off, int v) {
        U16_VH.setRelease(s, off, (short) v);
    }

    static int getU16(MemorySegment s, long off) {
        return Short.toUnsignedInt(s.get(U16, off));
    }

    static void setU16(MemorySegment s, long off, int v) {
        s.set(U16, off, (short) v);
    }

    /** Checks a ring part's alignment and size; the spec's alignment makes the index accesses atomic. */
    static void checkPart(String name, MemorySegment part, long bytes, int align) {
        if (part.byteSize() < bytes) {
            throw new VirtqueueException(name + " is " + part.byteSize() + " bytes, needs " + bytes);
        }
        if ((part.address() & (align - 1)) != 0) {
            throw new VirtqueueException(name + " at 0x" + Long.toHexString(part.address()) + " is not " + align
                    + "-byte aligned");
        }
    }
}
