package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A long run of TX-like bursts (one-descriptor chains completed with length 0) through one ring, past the laps of
 * the split ring's 16-bit indexes. Our device once returned an IN_ORDER burst as one used entry moving the used
 * index by one, and the split driver, which bounded the used entries pending by the 16-bit distance between the
 * used and avail indexes, declared the ring broken once that distance had lapped ("used index runs ahead"; found by
 * {@code mqvirtio bench}: ours->ours in split+inorder stopped after about 2 million frames). The used index counts
 * chains (2.7.9: a batch's entry moves it by the batch's size), so the two indexes keep step; 70,000 bursts of two
 * go past their laps many times.
 */
class InOrderLapsTest {
    static final int BURST = 2;

    @ParameterizedTest(name = "packed={0} inOrder={1}")
    @CsvSource({"false,true", "false,false", "true,true", "true,false"})
    void burstsKeepFlowingPastTheIndexesLaps(boolean packed, boolean inOrder) {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        try (TwoViewMemory mem = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring ring = mem.ring(256, features, 0);
            DriverRing drv = ring.driver();
            DeviceRing dev = ring.device();
            long buf = mem.gpa(mem.alloc(4096, 64));
            long[] addr = {buf};
            int[] len = {64};
            DescriptorChain chain = new DescriptorChain(4);
            int rounds = 70_000;
            for (int r = 0; r < rounds; r++) {
                for (int i = 0; i < BURST; i++) {
                    assertThat(drv.add(addr, len, 1, 0)).as("round %d", r).isNotNegative();
                }
                drv.publish();
                drv.needsKick();
                int popped = 0;
                while (dev.pop(chain)) {
                    dev.complete(chain, 0);
                    popped++;
                }
                dev.publish();
                dev.needsNotification();
                int reaped = 0;
                while (drv.reap() >= 0) {
                    reaped++;
                }
                assertThat(drv.brokenReason()).as("round %d", r).isNull();
                assertThat(popped).as("popped in round %d", r).isEqualTo(BURST);
                assertThat(reaped).as("reaped in round %d", r).isEqualTo(BURST);
            }
            assertThat(drv.inFlight()).isZero();
            assertThat(drv.freeDescriptors()).isEqualTo(256);
        }
    }

    /** The bound that stays: with IN_ORDER too, more used entries than chains in flight break the driver. */
    @Test
    void moreUsedEntriesThanChainsInFlightStillBreakTheInOrderDriver() {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
        try (TwoViewMemory mem = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring ring = mem.ring(8, features, 0);
            long[] addr = {mem.gpa(mem.alloc(64, 8))};
            ring.driver().add(addr, new int[] {64}, 1, 0);
            ring.driver().add(addr, new int[] {64}, 1, 0);
            ring.driver().publish();
            mem.driver().set(ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN),
                    ring.usedOff() + SplitRing.USED_IDX, (short) 3);
            assertThatThrownBy(() -> ring.driver().reap()).isInstanceOf(VirtqueueException.class)
                    .hasMessageContaining("runs ahead of the 2 chains in flight");
        }
    }
}
