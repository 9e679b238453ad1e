package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.PackedRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;

/**
 * Where a packed ring resumes after its backend died (QEMU then sends the base of the last clean stop, which may be
 * laps behind): the ring's USED bits say it, for rings whose chains take one slot each. A ring is played forward
 * here as a driver and a device would write its flags, then resumed from a stale base.
 */
class PackedResumeTest {
    /**
     * The driver keeps up to {@code window} descriptors available ahead of the device; the device consumes
     * {@code consumed} descriptors in all (any number of laps). Then the ring resumes from the start's base.
     */
    @Property(tries = 500)
    void aStaleBaseResumesWhereTheDeviceStopped(@ForAll @IntRange(min = 1, max = 64) int size,
                                                 @ForAll @IntRange(min = 0, max = 1000) int consumed,
                                                 @ForAll @IntRange(min = 0, max = 64) int window) {
        int ahead = Math.min(window, size);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ring = a.allocate(16L * size, 16);
            // driver: avail position and wrap; device: position and wrap
            int dp = 0, vp = 0;
            boolean dw = true, vw = true;
            long posted = 0;
            for (long used = 0; used <= consumed; used++) {
                while (posted < used + ahead) { // the driver posts up to its window ahead of the device
                    ring.set(U16, 16L * dp + DESC_FLAGS, (short) availFlags(dw));
                    posted++;
                    if (++dp == size) {
                        dp = 0;
                        dw = !dw;
                    }
                }
                if (used == consumed) {
                    break;
                }
                if (posted <= used) {
                    break; // nothing available: the device waits (it cannot consume more than was posted)
                }
                ring.set(U16, 16L * vp + DESC_FLAGS, (short) usedFlags(vw)); // one slot per chain
                if (++vp == size) {
                    vp = 0;
                    vw = !vw;
                }
            }
            RingBase r = PackedDeviceRing.resumeAt(ring, size, RingBase.PACKED_START);
            assertThat(r.avail()).as("resume position").isEqualTo(vp);
            assertThat(r.availWrap()).as("resume wrap counter").isEqualTo(vw);
            assertThat(r.used()).isEqualTo(vp);
            // a base that agrees with the ring is taken as it is
            assertThat(PackedDeviceRing.resumeAt(ring, size, new RingBase(vp, vw, vp, vw)))
                    .isEqualTo(new RingBase(vp, vw, vp, vw));
        }
    }
}
