package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The device's EVENT_IDX notification decision when 65,536 used entries or more were published since the last
 * decision. The worker takes no decision while a ring has no call eventfd (a frontend may take it away with
 * SET_VRING_CALL and NOFD, to poll, and give one back later), so the distance can be anything; the split ring's
 * indexes have 16 bits, and vring_need_event then read a distance of exactly 65,536 as none: with the driver
 * asking for the very next entry, the device signalled nothing, and a driver waiting for that call waited for good.
 * Linux's vhost forgets its last decision when the used index passes it (vhost_add_used_n); the packed ring
 * counts in 64 bits.
 */
class NotificationWrapTest {
    static final int SIZE = 8;

    @ParameterizedTest(name = "packed={0}")
    @ValueSource(booleans = {false, true})
    @Timeout(30)
    void anEntryTheDriverAsksForIsSignalledAfterALapOfUndecidedEntries(boolean packed) {
        long f = VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0);
        try (TwoViewMemory mem = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring r = mem.ring(SIZE, f, 0);
            long buf = mem.gpa(mem.alloc(64, 64));
            DescriptorChain chain = new DescriptorChain(4);
            roundTrip(r, buf, chain);
            assertThat(r.device().needsNotification()).as("the first decision").isTrue();
            // exactly a lap of the 16-bit used index, less one, with no decision (the ring had no call fd)
            for (int i = 0; i < 65_535; i++) {
                roundTrip(r, buf, chain);
            }
            assertThat(r.driver().enableInterrupts()).as("nothing unreaped").isFalse(); // the next entry, please
            roundTrip(r, buf, chain);
            assertThat(r.device().needsNotification()).as("the entry the driver asked to be told of").isTrue();
        }
    }

    /** The driver offers one chain, the device pops, uses and publishes it, the driver reaps it. */
    private static void roundTrip(TwoViewMemory.Ring r, long buf, DescriptorChain chain) {
        int head = r.driver().add(new long[] {buf}, new int[] {64}, 1, 0);
        r.driver().publish();
        assertThat(r.device().pop(chain)).isTrue();
        r.device().complete(chain, 0);
        r.device().publish();
        assertThat(r.driver().reap()).isEqualTo(head);
    }
}
