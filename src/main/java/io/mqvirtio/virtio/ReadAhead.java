package io.mqvirtio.virtio;

import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The frame half of a device ring's read-ahead: the ring fills {@link #addresses()} with the guest-physical addresses
 * of the buffers a burst will pop, then {@link #touch} loads a byte of each buffer's first two cache lines.
 *
 * <p>Why a loop of its own: Java has no prefetch instruction, so a read-ahead is a load, and a load that misses
 * holds up the retirement of everything after it. Only as many misses overlap as the CPU's reorder window holds
 * loop bodies; a body of a few instructions (an array element, a subtraction, a compare, two byte loads) keeps a
 * whole burst's misses in flight, where a body that also reads the descriptor and looks up its region kept two or
 * three. Addresses outside the burst's first region are looked up one by one; those outside guest memory are
 * skipped. A hint only: nothing here is trusted or validated (pop does that).
 */
final class ReadAhead {
    static final int MAX = 64;

    private final long[] addresses = new long[MAX];
    @SuppressWarnings("unused")
    private long sink; // keeps the loads

    long[] addresses() {
        return addresses;
    }

    /** Touches the buffers at {@code addresses()[0..count-1]}. */
    void touch(GuestMemory memory, int count) {
        if (count == 0) {
            return;
        }
        long[] at = addresses;
        MemoryRegion r = memory.regionOfGpa(at[0], 128);
        if (r == null) {
            return;
        }
        long base = r.guestPhysAddr();
        long limit = r.size() - 128; // both lines inside the region
        if (limit < 0) {
            return; // a region smaller than two lines (only a hostile frontend shares one): nothing to gain
        }
        MemorySegment s = r.segment();
        long sum = 0;
        for (int i = 0; i < count; i++) {
            long off = at[i] - base;
            if (Long.compareUnsigned(off, limit) <= 0) {
                sum += s.get(ValueLayout.JAVA_BYTE, off) + s.get(ValueLayout.JAVA_BYTE, off + 64);
            } else {
                sum += other(memory, at[i]);
            }
        }
        sink = sum;
    }

    private static long other(GuestMemory memory, long gpa) {
        MemoryRegion r = memory.regionOfGpa(gpa, 128);
        if (r == null) {
            return 0;
        }
        MemorySegment s = r.segment();
        long off = gpa - r.guestPhysAddr();
        return s.get(ValueLayout.JAVA_BYTE, off) + s.get(ValueLayout.JAVA_BYTE, off + 64);
    }
}
