package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.reap;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.SplitDriverRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The sequence a frontend such as QEMU sends, byte by byte from a raw frontend, against the real net device with the
 * loopback backend: features, protocol features with REPLY_ACK, queue pairs, memory slots, a memfd memory table,
 * every ring set up and enabled, frames through TX and back on RX, status, MTU, RARP, and GET_VRING_BASE returning
 * the last avail index.
 */
@Timeout(30)
class NegotiationTest {
    static final int PAIRS = 2;
    static final int RING = 256;

    @TempDir
    Path dir;

    @Test
    void qemuLikeSequenceWithTrafficOnEveryPair() throws Exception {
        Path sock = dir.resolve("vu.sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("neg", PAIRS), new LoopbackBackend(PAIRS, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             RawPeer fe = RawPeer.connect(sock);
             GuestRam ram = new GuestRam()) {
            long features = fe.get(Request.GET_FEATURES);
            assertThat(VirtioFeatures.has(features, VirtioFeatures.F_VERSION_1)).isTrue();
            assertThat(VirtioFeatures.has(features, VirtioNet.F_MQ)).isTrue();
            assertThat(VirtioFeatures.has(features, Protocol.F_PROTOCOL_FEATURES)).isTrue();

            long pf = fe.get(Request.GET_PROTOCOL_FEATURES);
            for (int bit : new int[] {Protocol.PF_MQ, Protocol.PF_REPLY_ACK, Protocol.PF_CONFIGURE_MEM_SLOTS,
                    Protocol.PF_NET_MTU, Protocol.PF_RARP, Protocol.PF_STATUS}) {
                assertThat(pf & (1L << bit)).as("protocol feature %d", bit).isNotZero();
            }
            fe.send(Request.SET_PROTOCOL_FEATURES, u64(pf)); // as QEMU: no ack asked, REPLY_ACK not yet on
            assertThat(fe.get(Request.GET_QUEUE_NUM)).as("queue pairs, not rings").isEqualTo(PAIRS);
            assertThat(fe.get(Request.GET_MAX_MEM_SLOTS)).isEqualTo(Protocol.MAX_MEM_SLOTS);
            fe.ok(Request.SET_OWNER, new byte[0]);

            long acked = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
                    | VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES);
            fe.ok(Request.SET_FEATURES, u64(acked));
            assertThat(dev.negotiatedFeatures()).isEqualTo(acked & ~VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES));
            fe.ok(Request.SET_STATUS, u64(0x1 | 0x2 | 0x8)); // ACKNOWLEDGE | DRIVER | FEATURES_OK
            assertThat(fe.get(Request.GET_STATUS)).isEqualTo(0xb);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());

            List<EventFd> kicks = new ArrayList<>(), calls = new ArrayList<>();
            List<SplitDriverRing> drivers = new ArrayList<>();
            List<GuestRam.RingAt> rings = new ArrayList<>();
            try {
                for (int i = 0; i < 2 * PAIRS; i++) {
                    GuestRam.RingAt r = ram.ring(i, RING);
                    rings.add(r);
                    drivers.add(ram.driver(r, acked));
                    kicks.add(EventFd.create());
                    calls.add(EventFd.create());
                    fe.ok(Request.SET_VRING_NUM, state(i, RING));
                    fe.ok(Request.SET_VRING_BASE, state(i, 0));
                    fe.ok(Request.SET_VRING_ADDR, ram.vringAddr(r));
                    fe.ok(Request.SET_VRING_CALL, u64(i), calls.get(i).fd());
                    fe.ok(Request.SET_VRING_KICK, u64(i), kicks.get(i).fd());
                }
                for (int i = 0; i < 2 * PAIRS; i++) {
                    fe.ok(Request.SET_VRING_ENABLE, state(i, 1));
                }
                fe.ok(Request.SET_STATUS, u64(0xf)); // DRIVER_OK

                int[] sent = new int[PAIRS];
                long[][] rxBufs = new long[PAIRS][];
                for (int p = 0; p < PAIRS; p++) {
                    SplitDriverRing rx = drivers.get(2 * p), tx = drivers.get(2 * p + 1);
                    long[] rxBuf = rxBufs[p] = new long[16];
                    for (int b = 0; b < rxBuf.length; b++) {
                        rxBuf[b] = ram.alloc(2048);
                        assertThat(rx.add(new long[] {ram.gpa(rxBuf[b])}, new int[] {2048}, 0, 1)).isNotNegative();
                    }
                    rx.publish();
                    kicks.get(2 * p).signal();
                    int frames = 3 + p;
                    for (int f = 0; f < frames; f++) {
                        long off = ram.alloc(VirtioNet.HDR_SIZE + 64);
                        MemorySegment fr = ram.seg().asSlice(off, VirtioNet.HDR_SIZE + 64);
                        fr.fill((byte) 0);
                        fr.asSlice(VirtioNet.HDR_SIZE).fill((byte) (0x40 + 16 * p + f));
                        assertThat(tx.add(new long[] {ram.gpa(off)}, new int[] {VirtioNet.HDR_SIZE + 64}, 1, 0)).isNotNegative();
                    }
                    tx.publish();
                    kicks.get(2 * p + 1).signal();
                    sent[p] = frames;

                    // The frames come back on the same pair's RX, in order, intact; the driver is notified.
                    for (int f = 0; f < frames; f++) {
                        int head = reap(rx);
                        int len = rx.reapedLength();
                        assertThat(len).isEqualTo(VirtioNet.HDR_SIZE + 64);
                        MemorySegment got = ram.seg().asSlice(rxBuf[head], len);
                        for (int i = VirtioNet.HDR_SIZE; i < len; i++) {
                            assertThat(got.get(ValueLayout.JAVA_BYTE, i)).isEqualTo((byte) (0x40 + 16 * p + f));
                        }
                    }
                    assertThat(awaitSignal(calls.get(2 * p))).as("RX call of pair %d", p).isTrue();
                    for (int f = 0; f < frames; f++) {
                        reap(tx);
                    }
                }

                fe.ok(Request.NET_SET_MTU, u64(9000));
                byte[] mac = {0x52, 0x54, 0, 0x12, 0x34, 0x56};
                fe.ok(Request.SEND_RARP, java.util.Arrays.copyOf(mac, 8));
                int rarpHead = reap(drivers.get(0));
                assertThat(drivers.get(0).reapedLength()).isEqualTo(VirtioNet.HDR_SIZE + 60);
                MemorySegment rarp = ram.seg().asSlice(rxBufs[0][rarpHead] + VirtioNet.HDR_SIZE, 60);
                assertThat(rarp.asSlice(6, 6).toArray(ValueLayout.JAVA_BYTE)).as("RARP source MAC").isEqualTo(mac);
                assertThat(rarp.asSlice(12, 2).toArray(ValueLayout.JAVA_BYTE)).as("ethertype").isEqualTo(new byte[] {(byte) 0x80, 0x35});

                // GET_VRING_BASE stops each ring and returns the next avail index it would read.
                for (int p = 0; p < PAIRS; p++) {
                    RawPeer.Reply txBase = stateReply(fe, 2 * p + 1);
                    assertThat(txBase.u32(0)).isEqualTo(2 * p + 1);
                    assertThat(txBase.u32(4)).as("TX base of pair %d", p).isEqualTo(sent[p]);
                    RawPeer.Reply rxBase = stateReply(fe, 2 * p);
                    assertThat(rxBase.u32(4)).as("RX base of pair %d", p).isEqualTo(ram.usedIdx(rings.get(2 * p)))
                            .isEqualTo(sent[p] + (p == 0 ? 1 : 0));
                }
                // Stopped rings can be set up again (as after a migration or a reconnect).
                fe.ok(Request.SET_VRING_BASE, state(1, sent[0]));
                fe.ok(Request.SET_VRING_KICK, u64(1), kicks.get(1).fd());
                fe.ok(Request.SET_VRING_ENABLE, state(1, 1));
                assertThat(stateReply(fe, 1).u32(4)).isEqualTo(sent[0]);
            } finally {
                kicks.forEach(EventFd::close);
                calls.forEach(EventFd::close);
            }
        }
    }

    private static RawPeer.Reply stateReply(RawPeer fe, int ring) {
        fe.send(Request.GET_VRING_BASE, state(ring, 0));
        RawPeer.Reply r = fe.expectReplyTo(Request.GET_VRING_BASE.id);
        assertThat(r.payload()).hasSize(8);
        return r;
    }

    private static boolean awaitSignal(EventFd e) throws InterruptedException {
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (System.nanoTime() < deadline) {
            if (e.drain() > 0) {
                return true;
            }
            Thread.sleep(1);
        }
        return false;
    }

    /**
     * A legacy frontend (no VERSION_1) without MRG_RXBUF uses a 10-byte header, where the device reads and writes 12:
     * its SET_FEATURES is refused, saying why (before: accepted, and every frame was misread by two bytes both ways).
     * Legacy with MRG_RXBUF has the 12-byte header and is served; so is every modern set.
     */
    @Test
    void aLegacyDriverWithoutMergeableBuffersIsRefused() throws Exception {
        Path sock = dir.resolve("legacy.sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("legacy", 1), new LoopbackBackend(1, 1500));
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             LogCapture log = new LogCapture();
             RawPeer fe = RawPeer.connect(sock)) {
            fe.get(Request.GET_FEATURES);
            fe.send(Request.SET_PROTOCOL_FEATURES, u64(1L << Protocol.PF_REPLY_ACK));
            fe.ok(Request.SET_OWNER, new byte[0]);
            long pf = VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES);
            assertThat(fe.ack(Request.SET_FEATURES, u64(pf))).as("legacy, no MRG_RXBUF").isNotZero();
            fe.ok(Request.SET_FEATURES, u64(pf | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)));
            assertThat(dev.negotiatedFeatures()).isEqualTo(VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF));
            fe.ok(Request.SET_FEATURES, u64(pf | VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)));
            assertThat(String.join("\n", log.lines())).contains("10-byte virtio-net header");
        }
    }
}
