package io.mqvirtio.linux;

import static io.mqvirtio.linux.Frames.ip;
import static io.mqvirtio.linux.Frames.mac;
import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.DatagramPacket;
import java.net.DatagramSocket;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.Predicate;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A real multiqueue TAP with the kernel on the other side, inside a throwaway network namespace: 4 queues with
 * 12-byte virtio-net headers, the device at 10.211.7.1/24, and this test playing a host at 10.211.7.2 on the
 * wire. Nothing leaves the namespace. Skipped unless root with /dev/net/tun.
 */
@Timeout(60)
class TapTest {
    private static final int QUEUES = 4, HDR = 12, TIMEOUT_MS = 5000;
    private static final byte[] OUR_IP = ip(10, 211, 7, 1), PEER_IP = ip(10, 211, 7, 2), PEER_MAC = mac(2);

    private TestNetns ns;
    private final Tap[] queues = new Tap[QUEUES];
    private String dev;
    private Epoll epoll;
    private final Arena arena = Arena.ofShared();
    private final MemorySegment hdr = arena.allocate(HDR), frame = arena.allocate(4096);
    private final IoVec iov = new IoVec(2);

    /** A frame read from queue {@code queue}: its virtio-net header and the Ethernet frame after it. */
    private record Got(int queue, byte[] hdr, byte[] frame) {}

    @BeforeEach
    void setUp() throws Exception {
        assumeTrue(Files.exists(Path.of("/dev/net/tun")), "needs /dev/net/tun");
        ns = TestNetns.create();
        // No IPv6 on the new device: its router solicitations and DAD probes would only be noise on the queues.
        ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
        dev = "mqvt" + Integer.toHexString(ThreadLocalRandom.current().nextInt(1 << 24));
        ns.inside(() -> {
            for (int i = 0; i < QUEUES; i++) {
                queues[i] = Tap.openQueue(dev, true); // opened in the namespace, so the device is created there
            }
            return null;
        });
        epoll = Epoll.create(QUEUES * 2);
        for (int i = 0; i < QUEUES; i++) {
            assertThat(queues[i].interfaceName()).isEqualTo(dev);
            queues[i].setVnetHdrSize(HDR);
            queues[i].setNonBlocking(true);
            epoll.add(queues[i], Epoll.EPOLLIN, i);
        }
        assertThat(queues[3].vnetHdrSize()).isEqualTo(HDR);
        ns.ip("addr", "add", "10.211.7.1/24", "dev", dev);
        ns.ip("link", "set", "dev", dev, "up");
    }

    @AfterEach
    void tearDown() throws Exception {
        try {
            if (epoll != null) {
                epoll.close();
            }
            for (Tap q : queues) {
                if (q != null) {
                    q.close(); // the last close destroys the (non-persistent) device
                }
            }
        } finally {
            if (ns != null) {
                ns.close();
            }
            arena.close();
        }
    }

    @Test
    void kernelAnswersArpWrittenOnEachQueue() throws Exception {
        for (int k = 0; k < QUEUES; k++) {
            byte[] senderMac = mac(10 + k), senderIp = ip(10, 211, 7, 10 + k);
            byte[] request = Frames.arp(Frames.ARP_REQUEST, senderMac, senderIp, null, OUR_IP);
            assertThat(write(k, request)).isEqualTo(HDR + request.length);

            Got reply = next(f -> Frames.isArp(f, Frames.ARP_REPLY)
                    && Arrays.equals(Frames.arpTargetIp(f), senderIp));
            assertThat(Frames.arpSenderIp(reply.frame())).isEqualTo(OUR_IP);
            assertThat(Frames.arpTargetMac(reply.frame())).isEqualTo(senderMac);
            assertThat(Frames.dstMac(reply.frame())).isEqualTo(senderMac);
            // No offloads were enabled, so the kernel sends a plain header: no flags, no GSO. Bytes 10..11
            // (num_buffers) are not checked: kernels before the tun_vnet rework skip them, newer ones zero them.
            assertThat(Arrays.copyOf(reply.hdr(), 10)).containsOnly(0);
        }
        long rx = Long.parseLong(ns.exec("cat", "/sys/class/net/" + dev + "/statistics/rx_packets"));
        assertThat(rx).isGreaterThanOrEqualTo(QUEUES);
    }

    @Test
    void udpRoundTripThroughTheQueues() throws Exception {
        // A socket of the namespace: created on its thread, usable from ours.
        try (DatagramSocket sock = ns.inside(() -> new DatagramSocket(new InetSocketAddress("10.211.7.1", 0)))) {
            sock.setSoTimeout(TIMEOUT_MS);
            byte[] ping = "ping".getBytes(StandardCharsets.US_ASCII);
            sock.send(new DatagramPacket(ping, ping.length, InetAddress.getByAddress(PEER_IP), 7777));

            // The kernel does not know 10.211.7.2 yet: first it asks, on some queue, and we answer on that queue.
            Got who = next(f -> Frames.isArp(f, Frames.ARP_REQUEST) && Arrays.equals(Frames.arpTargetIp(f), PEER_IP));
            byte[] tapMac = Frames.srcMac(who.frame());
            write(who.queue(), Frames.arp(Frames.ARP_REPLY, PEER_MAC, PEER_IP, tapMac, OUR_IP));

            Got dgram = next(f -> Frames.isUdp(f) && Frames.udpDstPort(f) == 7777);
            assertThat(Frames.dstMac(dgram.frame())).isEqualTo(PEER_MAC);
            assertThat(Frames.ipDst(dgram.frame())).isEqualTo(PEER_IP);
            assertThat(Frames.udpPayload(dgram.frame())).isEqualTo(ping);

            byte[] pong = "pong".getBytes(StandardCharsets.US_ASCII);
            write(dgram.queue(), Frames.udp(PEER_MAC, tapMac, PEER_IP, OUR_IP, 7777,
                    Frames.udpSrcPort(dgram.frame()), pong));
            DatagramPacket in = new DatagramPacket(new byte[64], 64);
            sock.receive(in);
            assertThat(Arrays.copyOf(in.getData(), in.getLength())).isEqualTo(pong);
            assertThat(in.getAddress().getAddress()).isEqualTo(PEER_IP);
        }
    }

    @Test
    void detachedQueuesReceiveNothing() throws Exception {
        ns.ip("neigh", "replace", "10.211.7.2", "lladdr", "02:00:00:00:07:02", "dev", dev, "nud", "permanent");
        try (DatagramSocket sock = ns.inside(() -> new DatagramSocket(new InetSocketAddress("10.211.7.1", 0)))) {
            // Many flows (one per destination port): the kernel spreads them over the attached queues by hash.
            Set<Integer> all = sendFlows(sock, 20000);
            assertThat(all).as("flows spread over several queues").hasSizeGreaterThan(1);

            int keep = 3;
            for (int i = 0; i < QUEUES; i++) {
                if (i != keep) {
                    queues[i].detach();
                }
            }
            assertThat(sendFlows(sock, 21000)).containsExactly(keep);
            // A detached queue stays polled but quiet and reads as empty; the kernel did not close it.
            assertThat(epoll.await(50)).isZero();
            assertThat(queues[0].read(frame)).isEqualTo(-1);
            // Surprise: it still accepts writes and injects them, so a disabled TX ring must drop, not write.
            byte[] request = Frames.arp(Frames.ARP_REQUEST, mac(20), ip(10, 211, 7, 20), null, OUR_IP);
            assertThat(write(1, request)).isEqualTo(HDR + request.length);
            assertThat(next(f -> Frames.isArp(f, Frames.ARP_REPLY)).queue()).isEqualTo(keep);

            queues[0].attach();
            assertThat(sendFlows(sock, 22000)).containsExactlyInAnyOrder(0, keep);
        }
    }

    /**
     * A host-side sender's frames (a packet socket bound to the device, 32 frames in one sendmmsg, each its own flow)
     * come out of the queues whole, spread by the kernel's queue selection; a name that is no interface, and
     * batches out of bounds, are clear errors.
     */
    @Test
    void framesSentThroughAPacketSocketComeOutOfTheQueuesWhole() throws Exception {
        try (Arena a = Arena.ofConfined(); PacketSocket sock = ns.inside(() -> PacketSocket.open(dev))) {
            PacketSocket.Batch batch = new PacketSocket.Batch(a, 32);
            List<byte[]> sent = new ArrayList<>();
            for (int i = 0; i < 32; i++) {
                byte[] f = Frames.udp(PEER_MAC, mac(1), PEER_IP, OUR_IP, 30000 + i, 9, new byte[] {(byte) i, 7, 7});
                MemorySegment m = a.allocate(f.length);
                MemorySegment.copy(f, 0, m, ValueLayout.JAVA_BYTE, 0, f.length);
                batch.set(i, m);
                sent.add(f);
            }
            assertThat(sock.send(batch, 32)).isEqualTo(32);
            Set<Integer> queuesUsed = new HashSet<>();
            for (int i = 0; i < 32; i++) {
                Got g = next(f -> Frames.isUdp(f) && Frames.udpDstPort(f) == 9);
                int flow = Frames.udpSrcPort(g.frame()) - 30000;
                assertThat(g.frame()).as("flow %d whole", flow).isEqualTo(sent.get(flow));
                queuesUsed.add(g.queue());
            }
            assertThat(queuesUsed).as("flows spread over several queues").hasSizeGreaterThan(1);
            assertThatThrownBy(() -> sock.send(batch, 33)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> sock.send(batch, 0)).isInstanceOf(IllegalArgumentException.class);
            assertThatThrownBy(() -> new PacketSocket.Batch(a, 0)).isInstanceOf(IllegalArgumentException.class);
        }
        assertThatThrownBy(() -> ns.inside(() -> PacketSocket.open("mqvnone0"))).isInstanceOf(ErrnoException.class)
                .hasMessageContaining("if_nametoindex(mqvnone0)");
    }

    /** Sends one datagram to each of 32 ports from {@code basePort}; returns the queues they came out of. */
    private Set<Integer> sendFlows(DatagramSocket sock, int basePort) throws Exception {
        int flows = 32;
        byte[] payload = {1};
        for (int p = basePort; p < basePort + flows; p++) {
            sock.send(new DatagramPacket(payload, 1, InetAddress.getByAddress(PEER_IP), p));
        }
        Set<Integer> queuesUsed = new HashSet<>();
        Set<Integer> ports = new HashSet<>();
        while (ports.size() < flows) {
            Got g = next(f -> Frames.isUdp(f) && Frames.udpDstPort(f) >= basePort
                    && Frames.udpDstPort(f) < basePort + flows);
            assertThat(ports.add(Frames.udpDstPort(g.frame()))).as("each datagram once").isTrue();
            queuesUsed.add(g.queue());
        }
        return queuesUsed;
    }

    /** Writes header (zeroed: no offload requested) and frame with one writev, as the TX path will. */
    private long write(int queue, byte[] eth) {
        hdr.fill((byte) 0);
        MemorySegment.copy(eth, 0, frame, ValueLayout.JAVA_BYTE, 0, eth.length);
        iov.clear();
        iov.add(hdr);
        iov.add(frame, 0, eth.length);
        return IoVec.writev(queues[queue], iov);
    }

    private final List<Got> pending = new ArrayList<>();

    /** The next frame the kernel sends (on any attached queue) that {@code match} accepts; others are skipped. */
    private Got next(Predicate<byte[]> match) {
        long deadline = System.nanoTime() + TIMEOUT_MS * 1_000_000L;
        while (true) {
            for (int i = 0; i < pending.size(); i++) {
                if (match.test(pending.get(i).frame())) {
                    return pending.remove(i);
                }
            }
            pending.clear(); // unmatched frames are noise to this caller
            int left = (int) ((deadline - System.nanoTime()) / 1_000_000L);
            assertThat(left).as("a matching frame within " + TIMEOUT_MS + " ms").isPositive();
            int n = epoll.await(left);
            for (int e = 0; e < n; e++) {
                drain((int) epoll.data(e));
            }
        }
    }

    /** Reads every frame waiting on {@code queue} with one readv each: header and frame land in their own buffers. */
    private void drain(int queue) {
        while (true) {
            hdr.fill((byte) 0x5a); // to see which header bytes the kernel writes
            iov.clear();
            iov.add(hdr);
            iov.add(frame);
            long n = IoVec.readv(queues[queue], iov);
            if (n < 0) {
                return;
            }
            assertThat(n).isGreaterThanOrEqualTo(HDR + Frames.ETH_HLEN);
            pending.add(new Got(queue, hdr.toArray(ValueLayout.JAVA_BYTE),
                    frame.asSlice(0, n - HDR).toArray(ValueLayout.JAVA_BYTE)));
        }
    }
}
