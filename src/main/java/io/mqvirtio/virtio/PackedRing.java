package io.mqvirtio.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * The packed virtqueue's memory layout (VIRTIO 1.3, 2.8): one descriptor ring that both sides read and write, and
 * two event suppression structures. Described once, here.
 *
 * <pre>
 * descriptor (16 bytes, align 16): le64 addr | le32 len | le16 id | le16 flags
 * event suppression (4 bytes, align 4): le16 off_wrap (bits 0-14 descriptor offset, bit 15 wrap counter)
 *                                       | le16 flags (bits 0-1: ENABLE 0, DISABLE 1, DESC 2)
 * </pre>
 * A descriptor is available when its AVAIL bit equals the driver's wrap counter and its USED bit does not; used when
 * both equal the device's wrap counter. In vhost-user's SET_VRING_ADDR the three areas come as desc (the ring),
 * avail (the driver's event suppression, which the device reads) and used (the device's, which it writes).
 */
public final class PackedRing {
    public static final int MAX_SIZE = 32768;

    public static final int DESC_SIZE = 16;
    public static final int DESC_ADDR = 0, DESC_LEN = 8, DESC_ID = 12, DESC_FLAGS = 14;
    public static final int F_NEXT = 1, F_WRITE = 2, F_INDIRECT = 4, F_AVAIL = 1 << 7, F_USED = 1 << 15;

    public static final int EVENT_BYTES = 4;
    public static final int EVENT_OFF_WRAP = 0, EVENT_FLAGS = 2;
    public static final int EVENT_ENABLE = 0, EVENT_DISABLE = 1, EVENT_DESC = 2;

    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** Acquire/release access to the flags of a descriptor and the event structures (aligned 16-bit fields). */
    static final VarHandle U16_VH = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    private PackedRing() {}

    /** Packed rings need not be a power of two (2.8): 1 to 32768 entries. */
    public static boolean isValidSize(int size) {
        return size > 0 && size <= MAX_SIZE;
    }

    public static long descRingBytes(int size) {
        return (long) DESC_SIZE * size;
    }

    /** The flags a side writes to make a descriptor available (driver) or used (device) with wrap counter {@code w}. */
    static int availFlags(boolean w) {
        return w ? F_AVAIL : F_USED;
    }

    static int usedFlags(boolean w) {
        return w ? F_AVAIL | F_USED : 0;
    }

    /** Whether {@code flags} say available for a reader whose wrap counter is {@code w}. */
    static boolean isAvail(int flags, boolean w) {
        return ((flags & F_AVAIL) != 0) == w && ((flags & F_USED) != 0) != w;
    }

    /** Whether {@code flags} say used for a reader whose wrap counter is {@code w}. */
    static boolean isUsed(int flags, boolean w) {
        return ((flags & F_AVAIL) != 0) == w && ((flags & F_USED) != 0) == w;
    }

    /**
     * vhost's "need event" for packed rings: did the published range from {@code old} to {@code now} (ring indexes
     * in 0..size-1, {@code now} with wrap counter {@code wrap}) cross the event descriptor {@code offWrap}?
     */
    static boolean needEvent(int offWrap, int now, int old, boolean wrap, int size) {
        int off = offWrap & 0x7fff;
        boolean eventWrap = (offWrap & 0x8000) != 0;
        if (now <= old) {
            old -= size;
        }
        if (eventWrap != wrap) {
            off -= size;
        }
        return ((now - off - 1) & 0xffff) < ((now - old) & 0xffff);
    }

    static int getU16Acquire(MemorySegment s, long off) {
        return Short.toUnsignedInt((short) U16_VH.getAcquire(s, off));
    }

    static void setU16Release(MemorySegment s, long off, int v) {
        U16_VH.setRelease(s, off, (short) v);
    }

    /** Checks a ring part's alignment and size. */
    static void checkPart(String name, MemorySegment part, long bytes, int align) {
        SplitRing.checkPart(name, part, bytes, align);
    }
}
