package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.SemaphoreEventFd;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * What a frontend's choice of descriptors and the order of its requests can do to a device's workers, below the
 * session (which refuses what it can tell is wrong): the workers must stay bounded whatever they were handed.
 */
@Timeout(60)
class FrontendOrderTest {
    static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong U64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final int SIZE = 8;
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1);

    /**
     * A kick eventfd in semaphore mode (each read takes one from its counter) filled with 2^40 by one write: the
     * session refuses it where the kernel says what it is, but not every kernel does. Level-triggered, the worker woke,
     * read one, ran an empty round and woke again at 100 % of a core (975 ms of CPU a second, measured); watched
     * edge-triggered it sleeps, and each write of the frontend's still wakes it once: a chain offered then is sent.
     */
    @Test
    void aKickThatAReadNeverEmptiesCostsAWakeUpPerWriteNotASpin() throws Exception {
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("semkick", 1), new LoopbackBackend(1, 1500));
             Arena arena = Arena.ofShared(); EventFd kick = SemaphoreEventFd.create(1L << 40)) {
            MemorySegment mem = arena.allocate(1 << 16, 4096);
            long base = mem.address();
            GuestMemory g = GuestMemory.of(List.of(new MemoryRegion(base, mem.byteSize(), base, 0, mem)));
            long desc = 0, avail = SplitRing.descTableBytes(SIZE), used = 4096, data = 8192;
            DeviceRing q = Rings.device(g, SIZE, base + desc, base + avail, base + used, FEATURES, RingBase.split(0, 0));
            dev.startRing(1, q, kick, null, true);
            assertThat(WorkerStallTest.workerCpuMillis(dev, 1000)).as("worker CPU over 1 s, ms").isLessThan(150);

            // a TX chain offered, then one kick: the worker wakes for it
            mem.set(U64, desc + SplitRing.DESC_ADDR, base + data);
            mem.set(U32, desc + SplitRing.DESC_LEN, VirtioNet.HDR_SIZE + 60);
            mem.set(U16, avail + SplitRing.AVAIL_RING, (short) 0);
            mem.set(U16, avail + SplitRing.AVAIL_IDX, (short) 1);
            kick.signal();
            HostileDriverTest.await(() -> mem.get(U16, used + SplitRing.USED_IDX) == 1, "the chain to be used");
            assertThat(dev.counters().get(1).packets()).isEqualTo(1);
            dev.stopRing(1);
            dev.reset();
        }
    }
}
