package io.mqvirtio.peers;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Our driver ({@link NetDriver}) against DPDK testpmd's vhost PMD ({@code net_vhost}, {@code io} forwarding on its
 * port looped to itself) at the edges: rings of 2, 4 and 8 entries, split and packed, IN_ORDER and mergeable
 * buffers each on and off, frames of 60 bytes to the largest a buffer takes, sent in a flood (as many as the ring
 * takes) and one at a time (a window of 1). One testpmd serves the drivers one after the other. Every frame must come
 * back once, in order, byte for byte, within bounded waits. And testpmd killed under a driver: the driver says the
 * backend is gone (as {@code NetDriverHostileBackendTest} pins), and a new driver is served by a new testpmd.
 */
@Tag("peer")
class DpdkDriverEdgeTest {
    static final int BUF = 2048;
    static final ValueLayout.OfInt BE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    @TempDir
    Path dir;

    static Testpmd vhost(PeerLab lab, String name, Path sock, int pairs) throws Exception {
        Testpmd tp = lab.testpmd(name, "net_vhost0,iface=" + sock + ",queues=" + pairs, pairs, "io", 0,
                "--port-topology=loop", "--no-flush-rx");
        tp.command("start");
        return tp;
    }

    /** Every ring size, layout, IN_ORDER and mergeable buffers choice, one driver after the other. */
    @ParameterizedTest(name = "{0} pairs")
    @ValueSource(ints = {1, 2})
    @Timeout(120)
    void tinyRingsGiveEveryFrameBackOnceInOrder(int pairs) throws Exception {
        Path sock = dir.resolve("vhost.sock");
        try (PeerLab lab = PeerLab.open(dir); Arena a = Arena.ofShared()) {
            Testpmd tp = vhost(lab, "testpmd", sock, pairs);
            SplittableRandom rnd = new SplittableRandom(pairs);
            for (int size : new int[] {2, 4, 8}) {
                for (boolean packed : new boolean[] {false, true}) {
                    for (boolean inOrder : new boolean[] {false, true}) {
                        for (boolean mrg : new boolean[] {false, true}) {
                            long f = NetDriver.WANTED_SPLIT & NetDriver.WANTED_ANY_ORDER
                                    & ~VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
                            f |= (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                                    | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0)
                                    | (mrg ? VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) : 0);
                            String what = "ring " + size + (packed ? " packed" : " split") + (inOrder ? " in-order" : "")
                                    + (mrg ? " mrg" : "") + ", " + pairs + " pairs";
                            NetDriver.Options o = new NetDriver.Options(pairs, size, BUF, 5000, f);
                            try (NetDriver nic = NetDriver.connect(sock, o)) {
                                assertThat(nic.features() & (f | VirtioFeatures.bit(VirtioNet.F_MQ)))
                                        .as("negotiated, %s", what).isEqualTo(f & (pairs > 1 ? -1
                                                : ~VirtioFeatures.bit(VirtioNet.F_MQ)));
                                for (int p = 0; p < pairs; p++) {
                                    echo(a, nic.pair(p), size, what, tp, rnd);
                                }
                            }
                            assertThat(tp.isAlive()).as("testpmd after %s:%n%s", what, tp.tail()).isTrue();
                        }
                    }
                }
            }
        }
    }

    /**
     * testpmd killed (SIGKILL) under a driver: every pair's next wait, send or receive says the backend is gone;
     * a new testpmd on the same path serves a new driver.
     */
    @Test
    @Timeout(60)
    void aKilledTestpmdIsSaidGoneAndANewOneServesANewDriver() throws Exception {
        try (PeerLab lab = PeerLab.open(dir); Arena a = Arena.ofShared()) {
            SplittableRandom rnd = new SplittableRandom(3);
            for (int round = 0; round < 3; round++) {
                boolean packed = round % 2 == 1;
                Path sock = dir.resolve("vhost" + round + ".sock");
                Testpmd tp = vhost(lab, "testpmd-" + round, sock, 2);
                long f = packed ? NetDriver.WANTED_ANY_ORDER : NetDriver.WANTED_SPLIT;
                NetDriver nic = NetDriver.connect(sock, new NetDriver.Options(2, 8, BUF, 2000, f));
                try {
                    for (int p = 0; p < 2; p++) {
                        echo(a, nic.pair(p), 8, "round " + round, tp, rnd);
                    }
                    ProcessHandle.of(tp.pid()).ifPresent(ProcessHandle::destroyForcibly);
                    for (int p = 0; p < 2; p++) {
                        NetQueuePair q = nic.pair(p);
                        long t0 = System.nanoTime();
                        assertThatThrownBy(() -> {
                            while (true) {
                                q.awaitReceive(20_000);
                            }
                        }).as("pair %d's wait", p).isInstanceOf(VhostUserException.class)
                                .hasMessageContaining("served no more");
                        assertThat(System.nanoTime() - t0).as("said within").isLessThan(TimeUnit.SECONDS.toNanos(5));
                        MemorySegment out = frame(a, p, 0, 60);
                        MemorySegment[] bufs = {a.allocate(BUF)};
                        assertThatThrownBy(() -> {
                            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                            while (System.nanoTime() < end) {
                                q.send(out);
                                q.receive(bufs, new int[1], 1);
                            }
                        }).as("pair %d's send and receive", p).isInstanceOf(VhostUserException.class);
                    }
                } finally {
                    nic.close();
                }
                tp.close();
                Files.deleteIfExists(sock);
            }
        }
    }

    /** A frame of {@code len} bytes carrying pair and sequence number, its other bytes following from them. */
    static MemorySegment frame(Arena a, int pair, int seq, int len) {
        MemorySegment f = a.allocate(len);
        byte[] head = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45};
        MemorySegment.copy(MemorySegment.ofArray(head), 0, f, 0, head.length);
        f.set(BE32, 16, pair);
        f.set(BE32, 20, seq);
        f.set(BE32, 24, len);
        for (int i = 28; i < len; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) (seq * 31 + i * 7 + pair));
        }
        return f;
    }

    /**
     * On {@code q}: a flood of 300 frames (as many in flight as its rings of {@code ring} entries hold), then 40 one
     * at a time; lengths from
     * 60 to the pair's largest; each must come back once, in order, byte for byte. A probe first, until testpmd
     * forwards (its vhost PMD may run a new device's RX queues before its TX queues): probes carry sequence -1 and
     * are skipped when they come back.
     */
    static void echo(Arena a, NetQueuePair q, int ring, String what, Testpmd tp, SplittableRandom rnd) throws Exception {
        int p = q.index();
        int max = q.maxFrame();
        MemorySegment[] bufs = new MemorySegment[16];
        for (int i = 0; i < bufs.length; i++) {
            bufs[i] = a.allocate(BUF);
        }
        int[] lens = new int[bufs.length];
        String ctx = what + ", pair " + p;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        boolean back = false;
        MemorySegment probe = frame(a, p, -1, 60);
        while (!back) {
            assertThat(System.nanoTime()).as("testpmd forwards, %s%n%s", ctx, tp.tail()).isLessThan(deadline);
            q.send(probe);
            long wait = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(50);
            while (!back && System.nanoTime() < wait) {
                back = q.receive(bufs, lens, bufs.length) > 0;
            }
        }
        List<MemorySegment> sent = new ArrayList<>();
        for (int s = 0; s < 340; s++) {
            int len = s % 5 == 0 ? max : s % 5 == 1 ? 60 : rnd.nextInt(60, max + 1);
            sent.add(frame(a, p, s, len));
        }
        int next = 0, got = 0;
        deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (got < sent.size()) {
            assertThat(System.nanoTime()).as("frames back in time, %s: %d of %d sent, %d back; rx %s tx %s%n%s", ctx,
                    next, sent.size(), got, q.rxCounters(), q.txCounters(), tp.tail()).isLessThan(deadline);
            // the flood: 300 frames, as many in flight as the rings hold (more and testpmd drops what our RX ring
            // has no room for, as a NIC does); then 40 with one in flight at a time
            int room = next < 300 ? Math.min(300 - next, ring - (next - got)) : next == got ? 1 : 0;
            if (room > 0 && next < sent.size()) {
                next += q.send(sent.subList(next, next + Math.min(room, sent.size() - next))
                        .toArray(MemorySegment[]::new), 0, Math.min(room, sent.size() - next));
            }
            int r = q.receive(bufs, lens, bufs.length);
            for (int i = 0; i < r; i++) {
                MemorySegment b = bufs[i];
                if (lens[i] >= 28 && b.get(BE32, 20) == -1) {
                    continue; // a late probe
                }
                assertThat(got).as("more frames back than sent, %s", ctx).isLessThan(next);
                MemorySegment want = sent.get(got);
                assertThat(lens[i]).as("length of frame %d, %s (seq back %d)", got, ctx, lens[i] >= 28
                        ? b.get(BE32, 20) : -2).isEqualTo((int) want.byteSize());
                assertThat(b.asSlice(0, lens[i]).mismatch(want)).as("bytes of frame %d, %s", got, ctx).isEqualTo(-1L);
                got++;
            }
            if (r == 0 && next == got && next >= 300) {
                Thread.onSpinWait();
            }
        }
        assertThat(q.rxCounters().errors() + q.txCounters().errors()).as("errors, %s", ctx).isZero();
    }
}
