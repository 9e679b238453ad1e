package io.mqvirtio.bench;

import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * One ring (split or packed, with or without IN_ORDER: a {@link RingMode}), a driver thread and a device thread,
 * each with its own mapping of one memfd (as two processes would have): the driver writes a frame into a buffer and
 * makes it available, the device pops the chain, copies the frame out (what a TX path does) and completes it with
 * length 0 (with IN_ORDER, a batch is then one used entry); the driver reaps and reuses the buffer. Both sides
 * busy-poll; notifications are decided (EVENT_IDX) but not delivered, so this measures the ring itself. The rings are
 * opened as the data path opens them ({@link Rings}).
 */
public final class RingBenchmark {
    public record Result(int frameSize, int ringSize, RingMode mode, long packets, double seconds, long driverCpuNs,
                         long deviceCpuNs) {
        public double mpps() {
            return packets / seconds / 1e6;
        }

        public double gbps() {
            return packets * (double) frameSize * 8 / seconds / 1e9;
        }

        public double nsPerPacket() {
            return seconds * 1e9 / packets;
        }

        public double driverCpuNsPerPacket() {
            return (double) driverCpuNs / packets;
        }

        public double deviceCpuNsPerPacket() {
            return (double) deviceCpuNs / packets;
        }
    }

    private static final int HDR = 12; // virtio_net_hdr_v1
    private static final int BUF = 2048;
    private static final int BATCH = 32;

    private RingBenchmark() {}

    public static Result run(int frameSize, int ringSize, RingMode mode, double warmupSeconds, double seconds)
            throws InterruptedException {
        long features = VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) | VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
                | (mode.packed() ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (mode.inOrder() ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        Rings.Layout layout = Rings.layout(ringSize, features);
        long bufBase = layout.totalBytes();
        long size = bufBase + (long) ringSize * BUF;
        long gpaBase = 0x1_0000_0000L;
        try (MemFd fd = MemFd.create("mqvirtio-ringbench", size);
             Mmap drvMap = Mmap.shared(fd, 0, size);
             Mmap devMap = Mmap.shared(fd, 0, size)) {
            MemorySegment dm = drvMap.segment();
            GuestMemory guest = GuestMemory.of(List.of(new MemoryRegion(gpaBase, size, dm.address(), 0, devMap.segment())));
            DriverRing drv = Rings.driver(ringSize, features, dm.asSlice(0, layout.totalBytes()));
            // the device translates the driver's addresses into its own mapping, as a vhost-user backend does
            DeviceRing dev = Rings.device(guest, ringSize, dm.address() + layout.descOffset(),
                    dm.address() + layout.availOffset(), dm.address() + layout.usedOffset(), features,
                    mode.packed() ? RingBase.PACKED_START : RingBase.split(0, 0));

            AtomicBoolean stop = new AtomicBoolean();
            java.util.concurrent.atomic.AtomicLong count = new java.util.concurrent.atomic.AtomicLong();
            ThreadMXBean mx = ManagementFactory.getThreadMXBean();
            int len = HDR + frameSize;

            Thread device = Thread.ofPlatform().name("ring-device").start(() -> {
                DescriptorChain chain = new DescriptorChain(8);
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment sink = a.allocate(BUF, 64);
                    while (!stop.get()) {
                        int n = 0;
                        while (n < BATCH && dev.pop(chain)) {
                            chain.readFrom(HDR, sink.asSlice(0, chain.readableBytes() - HDR));
                            dev.complete(chain, 0);
                            n++;
                        }
                        if (n > 0) {
                            dev.publish();
                            dev.needsNotification();
                        } else {
                            Thread.onSpinWait();
                        }
                    }
                }
            });
            Thread driver = Thread.ofPlatform().name("ring-driver").start(() -> {
                long[] addr = new long[1];
                int[] lens = {len};
                long sent = 0;
                int nextBuf = 0;
                int[] freeBufs = new int[ringSize];
                int free = ringSize;
                for (int i = 0; i < ringSize; i++) {
                    freeBufs[i] = i;
                }
                int[] bufOfHead = new int[ringSize];
                while (!stop.get()) {
                    int h;
                    while ((h = drv.reap()) >= 0) {
                        freeBufs[free++] = bufOfHead[h];
                        sent++;
                    }
                    int added = 0;
                    while (free > 0 && added < BATCH) {
                        int b = freeBufs[--free];
                        long off = bufBase + (long) b * BUF;
                        dm.set(ValueLayout.JAVA_LONG_UNALIGNED, off + HDR, sent + added); // a frame's first bytes
                        addr[0] = gpaBase + off;
                        int head = drv.add(addr, lens, 1, 0);
                        bufOfHead[head] = b;
                        added++;
                    }
                    if (added > 0) {
                        drv.publish();
                        drv.needsKick();
                    } else {
                        Thread.onSpinWait();
                    }
                    count.setRelease(sent);
                }
            });
            Thread.sleep((long) (warmupSeconds * 1000));
            long drv0 = mx.getThreadCpuTime(driver.threadId());
            long dev0 = mx.getThreadCpuTime(device.threadId());
            long p0 = count.getAcquire();
            long t0 = System.nanoTime();
            Thread.sleep((long) (seconds * 1000));
            long p1 = count.getAcquire();
            long t1 = System.nanoTime();
            long drv1 = mx.getThreadCpuTime(driver.threadId());
            long dev1 = mx.getThreadCpuTime(device.threadId());
            stop.set(true);
            driver.join();
            device.join();
            return new Result(frameSize, ringSize, mode, p1 - p0, (t1 - t0) / 1e9, drv1 - drv0, dev1 - dev0);
        }
    }

}
