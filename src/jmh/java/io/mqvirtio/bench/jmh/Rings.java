package io.mqvirtio.bench.jmh;

import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.List;

/**
 * One ring, split or packed, in one piece of native memory, seen by a {@link DriverRing} and a {@link DeviceRing}
 * opened as the data path opens them ({@link io.mqvirtio.virtio.Rings}), on the same mapping for both: these
 * benchmarks measure the ring code in one thread, not the cache traffic between two. Buffers of 2 KiB follow the
 * ring; guest-physical addresses start at {@link #GPA}.
 *
 * <p>Two stand-ins, for a benchmark of one side alone: {@link #useAll} does the device's part with the plain stores
 * of a used entry, {@link #offer} the driver's with the stores of a chain's descriptors (what the layout makes
 * every driver write), neither with any bookkeeping or validation.
 */
final class Rings {
    static final long GPA = 0x1_0000_0000L;
    static final int BUF = 2048;

    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    /** Release stores of the fields the other side polls (split: the indexes; packed: a descriptor's flags). */
    private static final VarHandle U16_VH = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    final int size;
    final boolean packed;
    final MemorySegment mem;
    final long bufBase;
    final DriverRing driver;
    final DeviceRing device;
    private final io.mqvirtio.virtio.Rings.Layout layout;

    // the stand-in device's next used entry (split: the used index, free-running; packed: position and wrap)
    private int standInUsed;
    private boolean standInUsedWrap = true;
    // the stand-in driver's next available entry (split: the avail index; packed: position and wrap)
    private int standInAvail;
    private boolean standInAvailWrap = true;

    /**
     * @param packed   the packed layout (VIRTIO_F_RING_PACKED), else the split one
     * @param inOrder  VIRTIO_F_IN_ORDER negotiated: both sides then work as they do with it
     * @param eventIdx VIRTIO_F_EVENT_IDX negotiated
     */
    Rings(Arena arena, int size, boolean packed, boolean inOrder, boolean eventIdx) {
        this.size = size;
        this.packed = packed;
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
                | (eventIdx ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        layout = io.mqvirtio.virtio.Rings.layout(size, features);
        bufBase = layout.totalBytes();
        long total = bufBase + (long) size * BUF;
        mem = arena.allocate(total, 4096);
        GuestMemory guest = GuestMemory.of(List.of(new MemoryRegion(GPA, total, mem.address(), 0, mem)));
        driver = io.mqvirtio.virtio.Rings.driver(size, features, mem.asSlice(0, layout.totalBytes()));
        device = io.mqvirtio.virtio.Rings.device(guest, size, mem.address() + layout.descOffset(),
                mem.address() + layout.availOffset(), mem.address() + layout.usedOffset(), features,
                packed ? RingBase.PACKED_START : RingBase.split(0, 0));
    }

    /** Guest-physical address of buffer {@code i}. */
    long buffer(int i) {
        return GPA + bufBase + (long) (i % size) * BUF;
    }

    /**
     * Standing in for the device: marks the {@code n} chains the driver added last ({@code ids}, {@code slots}
     * descriptors each) used, length 0, one used entry each, in the order added.
     */
    void useAll(int[] ids, int n, int slots) {
        if (!packed) {
            long ring = layout.usedOffset() + SplitRing.USED_RING;
            for (int i = 0; i < n; i++) {
                long e = ring + (long) SplitRing.USED_ELEM_SIZE * (standInUsed++ & (size - 1));
                mem.set(U32, e, ids[i]);
                mem.set(U32, e + 4, 0);
            }
            U16_VH.setRelease(mem, layout.usedOffset() + SplitRing.USED_IDX, (short) standInUsed);
            return;
        }
        for (int i = 0; i < n; i++) {
            long b = layout.descOffset() + (long) standInUsed * PackedRing.DESC_SIZE;
            mem.set(U32, b + PackedRing.DESC_LEN, 0);
            mem.set(U16, b + PackedRing.DESC_ID, (short) ids[i]);
            U16_VH.setRelease(mem, b + PackedRing.DESC_FLAGS,
                    (short) (standInUsedWrap ? PackedRing.F_AVAIL | PackedRing.F_USED : 0));
            standInUsed += slots;
            if (standInUsed >= size) {
                standInUsed -= size;
                standInUsedWrap = !standInUsedWrap;
            }
        }
    }

    /**
     * Standing in for the driver: makes {@code n} chains of {@code slots} device-readable descriptors available
     * ({@code len[d]} bytes each), buffer ids 0 to n-1 (the chains of the last offer must have been completed).
     * Split: chain i in descriptors i × slots on, linked, then its avail slot, then the avail index (release);
     * packed: the chain's descriptors at the next ring positions, its first flags last (release).
     */
    void offer(int n, int slots, int[] len) {
        if (!packed) {
            long avail = layout.availOffset();
            for (int i = 0; i < n; i++) {
                int head = i * slots;
                for (int d = 0; d < slots; d++) {
                    long b = layout.descOffset() + (long) (head + d) * SplitRing.DESC_SIZE;
                    mem.set(U64, b + SplitRing.DESC_ADDR, buffer(i) + d * 1024L);
                    mem.set(U32, b + SplitRing.DESC_LEN, len[d]);
                    mem.set(U16, b + SplitRing.DESC_FLAGS, (short) (d + 1 < slots ? SplitRing.DESC_F_NEXT : 0));
                    mem.set(U16, b + SplitRing.DESC_NEXT, (short) (head + d + 1));
                }
                mem.set(U16, avail + SplitRing.AVAIL_RING + 2L * (standInAvail++ & (size - 1)), (short) head);
            }
            U16_VH.setRelease(mem, avail + SplitRing.AVAIL_IDX, (short) standInAvail);
            return;
        }
        for (int i = 0; i < n; i++) {
            long first = 0;
            int firstFlags = 0;
            for (int d = 0; d < slots; d++) {
                long b = layout.descOffset() + (long) standInAvail * PackedRing.DESC_SIZE;
                mem.set(U64, b + PackedRing.DESC_ADDR, buffer(i) + d * 1024L);
                mem.set(U32, b + PackedRing.DESC_LEN, len[d]);
                mem.set(U16, b + PackedRing.DESC_ID, (short) i);
                int flags = (standInAvailWrap ? PackedRing.F_AVAIL : PackedRing.F_USED)
                        | (d + 1 < slots ? PackedRing.F_NEXT : 0);
                if (d == 0) {
                    first = b + PackedRing.DESC_FLAGS;
                    firstFlags = flags;
                } else {
                    mem.set(U16, b + PackedRing.DESC_FLAGS, (short) flags);
                }
                if (++standInAvail == size) {
                    standInAvail = 0;
                    standInAvailWrap = !standInAvailWrap;
                }
            }
            U16_VH.setRelease(mem, first, (short) firstFlags); // the chain's first flags last: it is then whole
        }
    }
}
