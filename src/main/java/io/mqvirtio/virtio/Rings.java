package io.mqvirtio.virtio;

import io.mqvirtio.memory.GuestMemory;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Opens a ring of the layout the negotiated features choose: the one place that knows which layouts exist. The
 * ring's three areas are given as the frontend's virtual addresses (vhost-user SET_VRING_ADDR) and translated and
 * bounds-checked here: a ring outside the shared memory, or misaligned, is a {@code GuestMemoryException} or a
 * {@link VirtqueueException} and opens nothing.
 */
public final class Rings {
    private static final ValueLayout.OfShort LE16_UNALIGNED =
            ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private Rings() {}

    /** Whether the features choose the packed layout (VIRTIO_F_RING_PACKED). */
    public static boolean packed(long features) {
        return VirtioFeatures.has(features, VirtioFeatures.F_RING_PACKED);
    }

    /** Whether {@code size} entries make a valid ring for these features. */
    public static boolean isValidSize(int size, long features) {
        return packed(features) ? PackedRing.isValidSize(size) : SplitRing.isValidSize(size);
    }

    /** What a ring of these features calls its sizes, for error messages. */
    public static String sizeRule(long features) {
        return packed(features) ? "in 1.." + PackedRing.MAX_SIZE : "a power of two in 1.." + SplitRing.MAX_SIZE;
    }

    /**
     * The device's side of a ring of {@code size} entries.
     *
     * @param descUva  the descriptor table (split) or ring (packed)
     * @param availUva the available ring (split) or the driver event suppression structure (packed)
     * @param usedUva  the used ring (split) or the device event suppression structure (packed)
     * @param base     where to resume (SET_VRING_BASE)
     */
    public static DeviceRing device(GuestMemory g, int size, long descUva, long availUva, long usedUva, long features,
                                    RingBase base) {
        return device(g, size, descUva, availUva, usedUva, features, base, false);
    }

    /**
     * As {@link #device(GuestMemory, int, long, long, long, long, RingBase)}; with {@code exact}, {@code base} is
     * where this process stopped the ring (GET_VRING_BASE's answer, or a restart of its own), and a packed ring
     * resumes at its used position as it is. Without it a packed base is the frontend's word, which after a backend
     * died may be laps behind, and the ring's flags decide ({@link PackedDeviceRing#resumeAt}); they cannot tell
     * every exact base from a stale one (chains completed out of order, a ring of one-slot chains stopped before a
     * single pending one), which this process, knowing where it stopped, need not guess.
     */
    public static DeviceRing device(GuestMemory g, int size, long descUva, long availUva, long usedUva, long features,
                                    RingBase base, boolean exact) {
        if (packed(features)) {
            MemorySegment ring = g.uva(descUva, PackedRing.descRingBytes(size));
            RingBase at = exact ? new RingBase(base.used(), base.usedWrap(), base.used(), base.usedWrap())
                    : PackedDeviceRing.resumeAt(ring, size, base);
            return new PackedDeviceRing(g, size, ring, g.uva(availUva, PackedRing.EVENT_BYTES),
                    g.uva(usedUva, PackedRing.EVENT_BYTES), features, at);
        }
        MemorySegment desc = g.uva(descUva, SplitRing.descTableBytes(size));
        MemorySegment avail = g.uva(availUva, SplitRing.availBytes(size));
        MemorySegment used = g.uva(usedUva, SplitRing.usedBytes(size));
        // Unaligned read: the alignment of the ring parts is checked by the ring, with a clear error.
        int usedIdx = Short.toUnsignedInt(used.get(LE16_UNALIGNED, SplitRing.USED_IDX));
        // Chains between the used index and the frontend's avail index were in flight with a backend that went away:
        // they are taken again from the used index (TX may resend a few frames; no RX buffer is lost). The caller
        // sees it in the ring's base.
        return new SplitDeviceRing(g, size, desc, avail, used, features, usedIdx, usedIdx);
    }

    /**
     * Where a driver that puts one ring in one contiguous area places its parts for these features: offsets of the
     * descriptor table (ring) and of the two other areas (split: avail and used rings; packed: the driver's and the
     * device's event suppression structures), and the area's size (a multiple of 4096).
     */
    public record Layout(long descOffset, long availOffset, long usedOffset, long totalBytes) {}

    public static Layout layout(int size, long features) {
        if (packed(features)) {
            long ring = PackedRing.descRingBytes(size);
            return new Layout(0, ring, ring + PackedRing.EVENT_BYTES, (ring + 2 * PackedRing.EVENT_BYTES + 4095) & -4096L);
        }
        SplitRing.Layout l = SplitRing.Layout.contiguous(size);
        return new Layout(l.descOffset(), l.availOffset(), l.usedOffset(), l.totalBytes());
    }

    /** The driver's side of a ring of {@code size} entries laid out in {@code area} as {@link #layout} says (zeroed). */
    public static DriverRing driver(int size, long features, MemorySegment area) {
        return driver(size, features, area, null, 0, 0);
    }

    /** As {@link #driver(int, long, MemorySegment)}, with an area for indirect tables ({@code indirectMax} each). */
    public static DriverRing driver(int size, long features, MemorySegment area, MemorySegment indirect, long indirectGpa,
                                    int indirectMax) {
        Layout l = layout(size, features);
        if (packed(features)) {
            return new PackedDriverRing(size, area.asSlice(l.descOffset(), PackedRing.descRingBytes(size)),
                    area.asSlice(l.availOffset(), PackedRing.EVENT_BYTES), area.asSlice(l.usedOffset(), PackedRing.EVENT_BYTES),
                    features, indirect, indirectGpa, indirectMax);
        }
        return new SplitDriverRing(size, area.asSlice(l.descOffset(), SplitRing.descTableBytes(size)),
                area.asSlice(l.availOffset(), SplitRing.availBytes(size)),
                area.asSlice(l.usedOffset(), SplitRing.usedBytes(size)), features, indirect, indirectGpa, indirectMax);
    }

    /**
     * Copies ring entries {@code first} to {@code first + n - 1} (modulo {@code size}), {@code entryBytes} each, from
     * {@code stage} (entry i at {@code i * entryBytes}) into {@code ring} (entry i at {@code ringBase + i *
     * entryBytes}): one copy, or two where the run passes the ring's end. A driver's staged burst into its ring.
     */
    static void copyEntries(MemorySegment stage, MemorySegment ring, long ringBase, int first, int n, int size,
                            int entryBytes) {
        int run = Math.min(n, size - first);
        MemorySegment.copy(stage, (long) first * entryBytes, ring, ringBase + (long) first * entryBytes,
                (long) run * entryBytes);
        if (run < n) {
            MemorySegment.copy(stage, 0, ring, ringBase, (long) (n - run) * entryBytes);
        }
    }
}
