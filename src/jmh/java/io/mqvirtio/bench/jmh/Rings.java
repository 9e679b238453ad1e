package io.mqvirtio.bench.jmh;

import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.SplitDeviceRing;
import io.mqvirtio.virtio.SplitDriverRing;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;

/**
 * One split ring in one piece of native memory, seen by a {@link SplitDriverRing} and a {@link SplitDeviceRing} (the same
 * mapping for both: these benchmarks measure the ring code in one thread, not the cache traffic between two).
 * Buffers of 2 KiB follow the ring; guest-physical addresses start at {@link #GPA}.
 */
final class Rings {
    static final long GPA = 0x1_0000_0000L;
    static final int BUF = 2048;

    final int size;
    final MemorySegment mem;
    final long bufBase;
    final long usedOffset;
    final SplitDriverRing driver;
    final SplitDeviceRing device;

    Rings(Arena arena, int size, boolean eventIdx) {
        this.size = size;
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
                | (eventIdx ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0);
        SplitRing.Layout layout = SplitRing.Layout.contiguous(size);
        bufBase = layout.totalBytes();
        usedOffset = layout.usedOffset();
        long total = bufBase + (long) size * BUF;
        mem = arena.allocate(total, 4096);
        GuestMemory guest = GuestMemory.of(List.of(new MemoryRegion(GPA, total, mem.address(), 0, mem)));
        driver = new SplitDriverRing(size, mem.asSlice(layout.descOffset(), SplitRing.descTableBytes(size)),
                mem.asSlice(layout.availOffset(), SplitRing.availBytes(size)),
                mem.asSlice(layout.usedOffset(), SplitRing.usedBytes(size)), features);
        device = new SplitDeviceRing(guest, size, guest.uva(mem.address() + layout.descOffset(), SplitRing.descTableBytes(size)),
                guest.uva(mem.address() + layout.availOffset(), SplitRing.availBytes(size)),
                guest.uva(mem.address() + layout.usedOffset(), SplitRing.usedBytes(size)), features, 0, 0);
    }

    /** Guest-physical address of buffer {@code i}. */
    long buffer(int i) {
        return GPA + bufBase + (long) (i % size) * BUF;
    }
}
