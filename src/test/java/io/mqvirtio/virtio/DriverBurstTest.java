package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Our driver's bursts ({@link DriverRing#addBurst}), which write their descriptors into a buffer of the ring's own and
 * copy them into the ring in one go, over many laps of small rings: nothing of a burst is visible to the device (nor
 * reaped as used by the driver) before {@link DriverRing#publish}, whatever the slot held before (a used descriptor,
 * a descriptor of the last lap); after it the device pops exactly the chains added, in order, across the ring's end;
 * with chains completed out of order and single adds between bursts, the split ring's heads come back in any order.
 */
class DriverBurstTest {

    @ParameterizedTest(name = "packed={0} inOrder={1} size={2}")
    @CsvSource({"true,true,7", "true,false,7", "true,true,256", "true,false,64", "false,true,8", "false,false,8",
            "false,true,256", "false,false,64"})
    void burstsAreInvisibleUntilPublishedThenExactlyWhatWasAdded(boolean packed, boolean inOrder, int size) {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        Random rnd = new Random(size * 31L + (packed ? 1 : 0) + (inOrder ? 2 : 0));
        try (TwoViewMemory mem = new TwoViewMemory(1 << 20)) {
            TwoViewMemory.Ring ring = mem.ring(size, features, 0);
            DriverRing drv = ring.driver();
            DeviceRing dev = ring.device();
            long base = mem.gpa(mem.alloc(64 * 1024, 64));
            DescriptorChain chain = new DescriptorChain(4);
            long[] addr = new long[64];
            int[] len = new int[64];
            int[] ids = new int[64];
            ArrayDeque<long[]> expected = new ArrayDeque<>(); // gpa, length, writable
            long serial = 0;
            for (int round = 0; round < 3000; round++) {
                int free = drv.freeDescriptors();
                if (free > 0 && rnd.nextInt(4) == 0) { // a single add between bursts
                    long a = base + (serial % 1000) * 64;
                    int l = 1 + (int) (serial % 60);
                    assertThat(drv.add(new long[] {a}, new int[] {l}, 1, 0)).isNotNegative();
                    expected.add(new long[] {a, l, 0});
                    serial++;
                    free--;
                }
                boolean writable = rnd.nextBoolean();
                int n = Math.min(1 + rnd.nextInt(Math.min(64, size + 2)), 64);
                for (int i = 0; i < n; i++) {
                    addr[i] = base + ((serial + i) % 1000) * 64;
                    len[i] = 1 + (int) ((serial + i) % 60);
                }
                int k = drv.addBurst(addr, len, n, writable, ids);
                assertThat(k).as("round %d", round).isEqualTo(Math.min(n, free));
                for (int i = 0; i < k; i++) {
                    expected.add(new long[] {addr[i], len[i], writable ? 1 : 0});
                }
                serial += k;
                assertThat(dev.available()).as("round %d: nothing before publish", round).isZero();
                assertThat(dev.pop(chain)).as("round %d: nothing before publish", round).isFalse();
                assertThat(drv.reap()).as("round %d: nothing used before publish", round).isNegative();
                drv.publish();
                drv.needsKick();
                List<DescriptorChain> popped = new ArrayList<>();
                while (true) {
                    DescriptorChain c = new DescriptorChain(4);
                    if (!dev.pop(c)) {
                        break;
                    }
                    long[] e = expected.poll();
                    assertThat(e).as("round %d: a chain the driver added", round).isNotNull();
                    assertThat(c.count()).isEqualTo(1);
                    assertThat(c.guestAddress(0)).as("round %d", round).isEqualTo(e[0]);
                    assertThat(c.length(0)).as("round %d", round).isEqualTo((int) e[1]);
                    assertThat(c.isWritable(0)).as("round %d", round).isEqualTo(e[2] == 1);
                    popped.add(c);
                }
                assertThat(expected).as("round %d: every chain added was popped", round).isEmpty();
                // complete some now, the rest later, out of order where the ring allows it
                if (!inOrder && popped.size() > 1 && rnd.nextBoolean()) {
                    java.util.Collections.reverse(popped);
                }
                for (DescriptorChain c : popped) {
                    dev.complete(c, c.isWritable(0) ? 1 : 0);
                }
                dev.publish();
                dev.needsNotification();
                int reaped = 0;
                while (drv.reap() >= 0) {
                    reaped++;
                }
                assertThat(drv.brokenReason()).as("round %d", round).isNull();
                assertThat(reaped).as("round %d", round).isEqualTo(popped.size());
            }
            assertThat(drv.inFlight()).isZero();
            assertThat(drv.freeDescriptors()).isEqualTo(size);
        }
    }
}
