package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentLinkedQueue;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The receive path for frames larger than an MTU (GSO), with mergeable buffers: the part beyond the first chains
 * spills and is copied into further chains; when the driver has not posted enough buffers, the frame waits
 * (parked) until it does. The frame must arrive whole, in order, with the right num_buffers, and nothing may be
 * written outside the buffers.
 */
class RxSpillTest {
    static final int SIZE = 64;

    @TempDir
    Path dir;

    /** A backend whose port delivers frames the test hands it, and offers GSO towards the guest. */
    static final class Scripted extends OnePortBackend {
        final ConcurrentLinkedQueue<byte[]> frames = new ConcurrentLinkedQueue<>();

        Scripted() {
            super("scripted");
        }

        @Override
        public long features() {
            return VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4);
        }

        @Override
        public Port open(int pair) {
            return fedPort(frames);
        }

    }

    static byte[] frameWithHeader(int frameLen) {
        byte[] f = new byte[VirtioNet.HDR_SIZE + frameLen];
        for (int i = VirtioNet.HDR_SIZE; i < f.length; i++) {
            f[i] = (byte) (i * 31 + 7);
        }
        return f;
    }

    @Test
    @Timeout(60)
    void largeFrameSpillsIntoMoreChainsAndWaitsForBuffers() throws Exception {
        Scripted backend = new Scripted();
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
                | VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4);
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("spill", 1), backend);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("spill.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, features, 2 << 20)) {
            byte pattern = 0x5A;
            d.mem.asSlice(d.dataOff).fill(pattern);
            EvilDriver.Ring rx = d.rx(0);
            int buf = 1536;
            List<Long> offs = new ArrayList<>();
            // first 20 buffers: enough for the small frame and part of the big one
            for (int i = 0; i < 20; i++) {
                long off = d.alloc(buf + 64) ;
                offs.add(off);
                rx.desc(i, d.gpa(off), buf, DESC_F_WRITE, 0);
                rx.offer(i);
            }
            byte[] small = frameWithHeader(100);
            byte[] big = frameWithHeader(40_000); // 27 buffers of 1536
            backend.frames.add(small);
            backend.frames.add(big);
            rx.kick();
            HostileDriverTest.await(() -> rx.usedIdx() >= 1, "the small frame");
            Thread.sleep(300);
            assertThat(rx.usedIdx()).as("the big frame waits: 19 buffers are too few").isEqualTo(1);
            // post 20 more: now it fits
            for (int i = 20; i < 40; i++) {
                long off = d.alloc(buf + 64);
                offs.add(off);
                rx.desc(i, d.gpa(off), buf, DESC_F_WRITE, 0);
                rx.offer(i);
            }
            rx.kick();
            int chainsForBig = (big.length + buf - 1) / buf;
            HostileDriverTest.await(() -> rx.usedIdx() >= 1 + chainsForBig, "the big frame");
            int[] u = rx.nextUsed();
            assertThat(u[0]).isZero();
            assertThat(u[1]).isEqualTo(small.length);
            assertThat(d.mem.get(EvilDriver.U16, offs.get(0) + VirtioNet.HDR_NUM_BUFFERS)).isEqualTo((short) 1);
            // the big frame: chains in order, lengths summing to the frame, num_buffers in the first
            byte[] got = new byte[big.length];
            int at = 0;
            int first = -1;
            for (int c = 0; c < chainsForBig; c++) {
                u = rx.nextUsed();
                assertThat(u).isNotNull();
                if (first < 0) {
                    first = u[0];
                }
                assertThat(u[1]).isLessThanOrEqualTo(buf);
                MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, offs.get(u[0]), got, at, u[1]);
                at += u[1];
            }
            assertThat(rx.nextUsed()).isNull();
            assertThat(at).isEqualTo(big.length);
            assertThat(d.mem.get(EvilDriver.U16, offs.get(first) + VirtioNet.HDR_NUM_BUFFERS)).isEqualTo((short) chainsForBig);
            got[VirtioNet.HDR_NUM_BUFFERS] = 0;
            got[VirtioNet.HDR_NUM_BUFFERS + 1] = 0;
            assertThat(got).isEqualTo(big);
            // the 64 bytes after every buffer were never written
            for (long off : offs) {
                for (int i = 0; i < 64; i++) {
                    assertThat(d.mem.get(ValueLayout.JAVA_BYTE, off + buf + i)).isEqualTo(pattern);
                }
            }
            assertThat(dev.counters().get(0).packets()).isEqualTo(2);
            assertThat(dev.counters().get(0).errors() + dev.counters().get(0).drops()).isZero();
        }
    }

    /** A driver on a split ring with MRG_RXBUF (and GSO) of {@code size} entries, its data area a pattern. */
    private EvilDriver open(VhostUserServer server, int size) {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
                | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
                | VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4);
        EvilDriver d = new EvilDriver(server.path(), 1, size, features, 2 << 20);
        d.mem.asSlice(d.dataOff).fill((byte) 0x5A);
        return d;
    }

    /** Writes an indirect table of {@code n} one-byte writable buffers at {@code bytes}; returns the table. */
    private static long oneByteBuffers(EvilDriver d, int n, long bytes) {
        long table = d.alloc(16L * n);
        for (int i = 0; i < n; i++) {
            long e = table + 16L * i;
            d.mem.set(EvilDriver.U64, e, d.gpa(bytes + i));
            d.mem.set(EvilDriver.U32, e + 8, 1);
            d.mem.set(EvilDriver.U16, e + 12, (short) (DESC_F_WRITE | (i + 1 < n ? DESC_F_NEXT : 0)));
            d.mem.set(EvilDriver.U16, e + 14, (short) (i + 1));
        }
        return table;
    }

    /**
     * Chains whose writable buffers together outnumber the receive's iovec (1,023 entries and the spill buffer's):
     * the second chain went in cut short, its bytes beyond that landed in the spill buffer, yet it was counted
     * whole, and the guest got a frame with 77 of its own stale bytes in place of the frame's. A chain now goes in
     * whole or not at all; here the frame is dropped (counted), as one that more buffers would not help.
     */
    @Test
    @Timeout(60)
    void chainsOutnumberingTheIovecNeverDeliverAFrameWithStaleBytes() throws Exception {
        Scripted backend = new Scripted();
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("iov", 1), backend);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("iov.sock"), dev);
             EvilDriver d = open(server, SIZE)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] bytes = {d.alloc(600), d.alloc(600), d.alloc(2048)};
            rx.desc(0, d.gpa(oneByteBuffers(d, 600, bytes[0])), 16 * 600, DESC_F_INDIRECT, 0);
            rx.desc(1, d.gpa(oneByteBuffers(d, 600, bytes[1])), 16 * 600, DESC_F_INDIRECT, 0);
            rx.desc(2, d.gpa(bytes[2]), 2048, DESC_F_WRITE, 0);
            for (int i = 0; i < 3; i++) {
                rx.offer(i);
            }
            byte[] f = frameWithHeader(1100 - VirtioNet.HDR_SIZE);
            backend.frames.add(f);
            rx.kick();
            HostileDriverTest.await(() -> rx.usedIdx() > 0 || dev.counters().get(0).drops() > 0, "the frame");
            Thread.sleep(50);
            byte[] got = new byte[f.length];
            int at = 0;
            int[] u;
            while ((u = rx.nextUsed()) != null) {
                MemorySegment.copy(d.mem, ValueLayout.JAVA_BYTE, bytes[u[0]], got, at, u[1]);
                at += u[1];
            }
            if (at > 0) {
                got[VirtioNet.HDR_NUM_BUFFERS] = 0;
                got[VirtioNet.HDR_NUM_BUFFERS + 1] = 0;
                assertThat(java.util.Arrays.mismatch(got, f)).as("the first byte delivered wrong").isEqualTo(-1);
            } else {
                assertThat(dev.counters().get(0).drops()).isEqualTo(1);
            }
        }
    }

    /**
     * A GSO frame larger than a full ring of chains of two descriptors holds can never fit: it waited for buffers
     * for good (the chains, not the ring entries they take, were counted against the ring's size, and never got
     * there), and the driver, its ring full, had none to post: the RX ring stalled. It is dropped, and the next
     * frame delivered.
     */
    @Test
    @Timeout(60)
    void aFrameLargerThanAFullRingOfTwoDescriptorChainsIsDropped() throws Exception {
        Scripted backend = new Scripted();
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("full", 1), backend);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("full.sock"), dev);
             EvilDriver d = open(server, 8)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] buf = new long[8];
            for (int i = 0; i < 8; i++) {
                buf[i] = d.alloc(1000);
                // four chains of two descriptors: the whole ring, 8,000 bytes
                rx.desc(i, d.gpa(buf[i]), 1000, DESC_F_WRITE | (i % 2 == 0 ? DESC_F_NEXT : 0), i + 1);
            }
            for (int i = 0; i < 8; i += 2) {
                rx.offer(i);
            }
            byte[] small = frameWithHeader(300);
            backend.frames.add(frameWithHeader(20_000));
            backend.frames.add(small);
            rx.kick();
            HostileDriverTest.await(() -> rx.usedIdx() == 1, "the frame after the one that can never fit");
            assertThat(dev.counters().get(0).drops()).isEqualTo(1);
            assertThat(rx.nextUsed()).containsExactly(0, small.length);
        }
    }
}
