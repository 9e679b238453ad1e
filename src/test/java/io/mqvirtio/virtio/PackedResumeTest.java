package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.PackedRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import net.jqwik.api.Assume;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.constraints.IntRange;

/**
 * Where a packed ring resumes after its backend died (QEMU then sends the base of the last clean stop, which may be
 * laps behind): the ring's USED bits say it, for rings whose chains take one slot each. A ring is played forward
 * here as a driver and a device would write its flags, then resumed from a stale base. And where a clean stop after
 * chains of several slots leaves it (a migration's destination resumes there).
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
            // One pending one-slot chain at the ring's end after a used descriptor reads exactly as a clean stop at
            // the start after a chain of two slots (a migration's base): the frontend's base wins there by design.
            Assume.that(!(size >= 2 && ring.get(U16, 16L * (size - 1) + DESC_FLAGS) == (short) availFlags(false)
                    && ring.get(U16, 16L * (size - 2) + DESC_FLAGS) == (short) usedFlags(false)));
            RingBase r = PackedDeviceRing.resumeAt(ring, size, RingBase.PACKED_START);
            assertThat(r.avail()).as("resume position").isEqualTo(vp);
            assertThat(r.availWrap()).as("resume wrap counter").isEqualTo(vw);
            assertThat(r.used()).isEqualTo(vp);
            // a base that agrees with the ring is taken as it is
            assertThat(PackedDeviceRing.resumeAt(ring, size, new RingBase(vp, vw, vp, vw)))
                    .isEqualTo(new RingBase(vp, vw, vp, vw));
        }
    }

    /**
     * A ring stopped cleanly after chains of one to four descriptors, completed in order (the device writes one used
     * descriptor per chain at its first slot and moves on by the chain's slots; the chains' other descriptors keep the
     * driver's flags): the base it stopped at, sent to a new backend (a migration's destination), is taken as it is,
     * where the USED bits alone would put it a slot back.
     */
    @Property(tries = 500)
    void anExactBaseAfterChainsOfSeveralDescriptorsIsTaken(@ForAll @IntRange(min = 1, max = 64) int size,
                                                           @ForAll @IntRange(min = 0, max = 300) int chains,
                                                           @ForAll long seed) {
        java.util.SplittableRandom r = new java.util.SplittableRandom(seed);
        try (Arena a = Arena.ofConfined()) {
            MemorySegment ring = a.allocate(16L * size, 16);
            int pos = 0;
            boolean w = true;
            for (int c = 0; c < chains; c++) {
                int n = 1 + r.nextInt(Math.min(4, size));
                int p = pos;
                boolean pw = w;
                for (int k = 0; k < n; k++) { // the driver posts the chain
                    ring.set(U16, 16L * p + DESC_FLAGS, (short) (availFlags(pw) | (k == n - 1 ? 0 : F_NEXT)));
                    if (++p == size) {
                        p = 0;
                        pw = !pw;
                    }
                }
                ring.set(U16, 16L * pos + DESC_FLAGS, (short) usedFlags(w)); // the device uses it
                pos = p;
                w = pw;
            }
            RingBase exact = new RingBase(pos, w, pos, w);
            assertThat(PackedDeviceRing.resumeAt(ring, size, exact)).isEqualTo(exact);
        }
    }
}
