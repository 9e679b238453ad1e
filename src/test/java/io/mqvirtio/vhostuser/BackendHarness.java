package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;

/** Steps a raw frontend takes in many tests: negotiation, memory, ring set-up, and a full session as a check. */
final class BackendHarness {
    /** Protocol features most tests negotiate: REPLY_ACK, MQ and memory slots, but not RARP, NET_MTU or STATUS. */
    static final long BASIC_PF = (1L << Protocol.PF_REPLY_ACK) | (1L << Protocol.PF_MQ) | (1L << Protocol.PF_CONFIGURE_MEM_SLOTS);
    static final long ALL_PF = BASIC_PF | (1L << Protocol.PF_RARP) | (1L << Protocol.PF_NET_MTU) | (1L << Protocol.PF_STATUS);
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES);
    static final int RING = 256;

    private BackendHarness() {}

    /** GET/SET features and protocol features and SET_OWNER, as QEMU orders them. */
    static void negotiate(RawPeer fe, long protocolFeatures) {
        long offered = fe.get(Request.GET_FEATURES);
        assertThat(offered & FEATURES).isEqualTo(FEATURES);
        long pf = fe.get(Request.GET_PROTOCOL_FEATURES);
        assertThat(pf & protocolFeatures).isEqualTo(protocolFeatures);
        fe.send(Request.SET_PROTOCOL_FEATURES, u64(protocolFeatures));
        fe.send(Request.SET_OWNER, new byte[0]);
        fe.send(Request.SET_FEATURES, u64(FEATURES));
        // A request with a reply orders everything before it: the three above were applied.
        assertThat(fe.get(Request.GET_QUEUE_NUM)).isPositive();
    }

    /** Size, base, addresses, call and kick for ring {@code i}, each acked (REPLY_ACK must be negotiated). */
    static void setupRing(RawPeer fe, GuestRam ram, int i, EventFd kick, EventFd call) {
        GuestRam.RingAt r = ram.ring(i, RING);
        fe.ok(Request.SET_VRING_NUM, state(i, RING));
        fe.ok(Request.SET_VRING_BASE, state(i, 0));
        fe.ok(Request.SET_VRING_ADDR, ram.vringAddr(r));
        fe.ok(Request.SET_VRING_CALL, u64(i), call.fd());
        fe.ok(Request.SET_VRING_KICK, u64(i), kick.fd());
    }

    /** Reaps one used entry, waiting up to 5 s for it. */
    static int reap(io.mqvirtio.virtio.DriverRing q) throws InterruptedException {
        long deadline = System.nanoTime() + 5_000_000_000L;
        int head;
        while ((head = q.reap()) < 0) {
            assertThat(System.nanoTime()).as("used entry within 5 s").isLessThan(deadline);
            Thread.sleep(1);
        }
        return head;
    }

    /** Waits until the server has no session (the last one has been torn down). */
    static void awaitNoSession(VhostUserServer server) throws InterruptedException {
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (server.hasSession()) {
            assertThat(System.nanoTime()).as("the session ends within 5 s").isLessThan(deadline);
            Thread.sleep(5);
        }
    }

    /**
     * A new frontend on {@code sock} gets full service: negotiation with acks, a memory table, two rings started and
     * enabled, GET_VRING_BASE on both; then it disconnects and the session is torn down (every ring stopped).
     */
    static void assertServesFully(VhostUserServer server, Path sock, RecordingDevice dev) throws InterruptedException {
        awaitNoSession(server);
        dev.clear();
        try (RawPeer fe = RawPeer.connect(sock);
             GuestRam ram = new GuestRam();
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create();
             EventFd k1 = EventFd.create(); EventFd c1 = EventFd.create()) {
            negotiate(fe, BASIC_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            setupRing(fe, ram, 0, k0, c0);
            setupRing(fe, ram, 1, k1, c1);
            fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
            fe.ok(Request.SET_VRING_ENABLE, state(1, 1));
            assertThat(dev.running()).isEqualTo(2);
            assertThat(dev.enabled(0) && dev.enabled(1)).isTrue();
            for (int i = 0; i < 2; i++) {
                fe.send(Request.GET_VRING_BASE, state(i, 0));
                RawPeer.Reply r = fe.expectReplyTo(Request.GET_VRING_BASE.id);
                assertThat(r.u32(0)).isEqualTo(i);
                assertThat(r.u32(4)).isZero();
            }
            assertThat(dev.running()).isZero();
        }
        awaitNoSession(server);
        assertThat(dev.calls()).contains("start 0 disabled", "start 1 disabled", "enable 0", "enable 1", "stop 0", "stop 1")
                .endsWith("reset");
    }
}
