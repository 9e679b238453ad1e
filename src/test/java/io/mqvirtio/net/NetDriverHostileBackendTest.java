package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.Channel;
import io.mqvirtio.vhostuser.Message;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.Request;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BiFunction;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Backends that misbehave: in setting up, each gives the driver's caller a clear {@link VhostUserException}, leaves
 * no thread waiting and no descriptor open; on the data path ({@link ScriptedRingBackend}: used entries, lengths and
 * headers of the test's choosing), each lie costs the frame it touches, counted as an error, and nothing else.
 */
class NetDriverHostileBackendTest {
    static final long GOOD_FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
            | (1L << Protocol.F_PROTOCOL_FEATURES);
    static final long GOOD_PROTOCOL = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_REPLY_ACK);

    @TempDir
    Path dir;

    /**
     * A backend that answers every request sensibly except where {@code twist} returns a different action:
     * null = behave, "close" = drop the connection, "silent" = never answer, "half" = half a reply, "slow" = behave
     * after 0.7 s, anything else = raw reply bytes.
     */
    private void hostile(BiFunction<Message, Integer, Object> twist, String expected) throws Exception {
        Path sock = dir.resolve("evil.sock");
        long fdsBefore = openFds();
        try (UnixSocket listener = UnixSocket.listen(sock, 1)) {
            Thread backend = Thread.ofPlatform().daemon().start(() -> {
                try (Channel ch = new Channel(listener.accept())) {
                    int n = 0;
                    while (true) {
                        Message received = ch.receive();
                        if (received == null) {
                            break;
                        }
                        try (Message m = received) {
                            Object act = twist.apply(m, n++);
                            if ("close".equals(act)) {
                                return;
                            }
                            if ("silent".equals(act)) {
                                Thread.sleep(3000);
                                return;
                            }
                            if ("half".equals(act)) {
                                // a reply header announcing 8 bytes, then 3 of them, then nothing
                                ByteBuffer b = ByteBuffer.allocate(Protocol.HEADER_SIZE + 3).order(ByteOrder.LITTLE_ENDIAN);
                                b.putInt(m.requestId()).putInt(Protocol.FLAG_REPLY | Protocol.VERSION).putInt(8);
                                try (Arena a = Arena.ofConfined()) {
                                    ch.socket().send(a.allocate(b.capacity()).copyFrom(MemorySegment.ofArray(b.array())));
                                }
                                Thread.sleep(3000);
                                return;
                            }
                            if ("slow".equals(act)) {
                                if (m.needsReply() || m.request().alwaysReplies) {
                                    Thread.sleep(700); // each reply in time, most of a timeout late
                                }
                                behave(ch, m);
                                continue;
                            }
                            if (act instanceof byte[] raw) {
                                ch.send(m.requestId(), Protocol.FLAG_REPLY, raw);
                                continue;
                            }
                            behave(ch, m);
                        }
                    }
                } catch (Exception e) {
                    // the driver hung up: fine
                }
            });
            NetDriver.Options o = new NetDriver.Options(2, 64, 2048, 1000, NetDriver.WANTED);
            assertThatThrownBy(() -> NetDriver.connect(sock, o)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining(expected);
            backend.join(5000);
            assertThat(backend.isAlive()).isFalse();
        }
        Files.deleteIfExists(sock);
        // no more than before: another test's socket may close while this one runs (a backend left to time out)
        assertThat(openFds()).as("descriptors after a failed connect").isLessThanOrEqualTo(fdsBefore);
    }

    private static void behave(Channel ch, Message m) {
        Request r = m.request();
        byte[] reply = switch (r) {
            case GET_FEATURES -> Message.u64Payload(GOOD_FEATURES);
            case GET_PROTOCOL_FEATURES -> Message.u64Payload(GOOD_PROTOCOL);
            case GET_QUEUE_NUM -> Message.u64Payload(4);
            case GET_VRING_BASE -> Message.vringState(m.u32(0), 0);
            default -> m.needsReply() ? Message.u64Payload(0) : null;
        };
        if (reply != null) {
            ch.send(m.requestId(), Protocol.FLAG_REPLY, reply);
        }
    }

    private static long openFds() throws IOException {
        try (Stream<Path> s = Files.list(Path.of("/proc/self/fd"))) {
            return s.count();
        }
    }

    @Test
    @Timeout(30)
    void backendWithoutVersion1() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_FEATURES ? Message.u64Payload(1L << Protocol.F_PROTOCOL_FEATURES) : null,
                "does not offer VERSION_1");
    }

    @Test
    @Timeout(30)
    void replyOfTheWrongSize() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_FEATURES ? new byte[4] : null, "reply has 4 bytes, expected 8");
    }

    /** The whole reply must come within the timeout, not only its first byte. */
    @Test
    @Timeout(30)
    void backendThatStallsMidReply() throws Exception {
        long t0 = System.nanoTime();
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? "half" : null, "stalled in the middle of its reply");
        assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("ms until the driver gave up").isLessThan(4500);
    }

    @Test
    @Timeout(30)
    void connectionDroppedMidSetup() throws Exception {
        hostile((m, n) -> m.request() == Request.SET_MEM_TABLE ? "close" : null, "closed the connection");
    }

    @Test
    @Timeout(30)
    void backendThatNeverAnswers() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? "silent" : null, "no reply from the backend within");
    }

    /**
     * A backend that answers every request just inside the timeout (0.7 of 1 s) does not stretch the set-up to a
     * timeout per request (about 25 of them here with REPLY_ACK, 17 s): the replies share one timeout in all.
     */
    @Test
    @Timeout(30)
    void aBackendSlowAtEveryReplyHasOneTimeoutInAll() throws Exception {
        long t0 = System.nanoTime();
        hostile((m, n) -> "slow", "deadline set for the replies");
        assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("ms until the driver gave up").isLessThan(4500);
    }

    /**
     * The longest wait a caller can ask for (Long.MAX_VALUE ms, "no limit" to many a Java caller) waits: the
     * milliseconds were multiplied into nanoseconds, which overflowed (to -10^6 for Long.MAX_VALUE, and for anything
     * above about 292 years) into a deadline already past, so a reply or message already there was refused at once
     * ("no reply from the backend within the deadline set for the replies", "no message arrived").
     */
    @Test
    @Timeout(30)
    void theLongestTimeoutsWaitForTheReply() throws Exception {
        for (long millis : new long[] {Long.MAX_VALUE, Long.MAX_VALUE / 1000}) {
            try (UnixSocket.Pair p = UnixSocket.pair(); Channel backend = new Channel(p.second())) {
                Thread t = Thread.ofPlatform().daemon().start(() -> {
                    try (Message m = backend.receive()) {
                        backend.send(m.requestId(), Protocol.FLAG_REPLY, Message.u64Payload(GOOD_FEATURES));
                    }
                });
                io.mqvirtio.vhostuser.Frontend fe = io.mqvirtio.vhostuser.Frontend.over(p.first(), 5000);
                fe.deadlineIn(millis);
                assertThat(fe.getFeatures()).as("deadline of %d ms", millis).isEqualTo(GOOD_FEATURES);
                t.join(5000);
            }
            try (UnixSocket.Pair p = UnixSocket.pair(); Channel a = new Channel(p.first());
                    Channel b = new Channel(p.second())) {
                a.send(Request.GET_FEATURES.id, 1, new byte[0]);
                try (Message m = b.receive(millis)) {
                    assertThat(m.requestId()).as("timeout of %d ms", millis).isEqualTo(Request.GET_FEATURES.id);
                }
            }
        }
    }

    @Test
    @Timeout(30)
    void refusedRequest() throws Exception {
        hostile((m, n) -> m.request() == Request.SET_MEM_TABLE ? Message.u64Payload(1) : null,
                "SET_MEM_TABLE was refused by the backend");
    }

    @Test
    @Timeout(30)
    void tooFewQueuePairs() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? Message.u64Payload(1) : null,
                "serves 1 queue pair, 2 asked");
    }

    @Test
    @Timeout(30)
    void absurdQueueCount() throws Exception {
        hostile((m, n) -> m.request() == Request.GET_QUEUE_NUM ? Message.u64Payload(-1) : null, "GET_QUEUE_NUM answered");
    }

    @Test
    @Timeout(30)
    void replyToAnotherRequest() throws Exception {
        Path sock = dir.resolve("evil2.sock");
        try (UnixSocket listener = UnixSocket.listen(sock, 1)) {
            Thread.ofPlatform().daemon().start(() -> {
                try (Channel ch = new Channel(listener.accept()); Message m = ch.receive()) {
                    ch.send(Request.GET_QUEUE_NUM.id, Protocol.FLAG_REPLY, Message.u64Payload(4));
                    Thread.sleep(2000);
                } catch (Exception ignored) {
                    // done
                }
            });
            assertThatThrownBy(() -> NetDriver.connect(sock, NetDriver.Options.pairs(1)))
                    .isInstanceOf(VhostUserException.class).hasMessageContaining("GET_FEATURES: the backend answered with GET_QUEUE_NUM");
        }
    }

    /**
     * Every wait for the backend is bounded, so the timeout must be one: a negative one reached the control
     * channel as "no limit", and a backend that never answered held connect for good; 0 gave no time at all.
     */
    @Test
    @Timeout(30)
    void aTimeoutThatBoundsNothingIsRefused() {
        for (int t : new int[] {-1, 0}) {
            assertThatThrownBy(() -> new NetDriver.Options(1, 64, 2048, t, NetDriver.WANTED))
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("timeout");
        }
    }

    /**
     * Features the driver cannot speak are the caller's mistake, refused before a connection: without VERSION_1
     * the driver negotiated a legacy device, whose header a backend that serves legacy drivers too (DPDK's vhost)
     * takes as 10 bytes without MRG_RXBUF where the driver writes and reads 12 (every frame both ways 2 bytes off);
     * bits beyond {@link NetDriver#WANTED} (the javadoc said "or more") were negotiated as offered, such as
     * HASH_REPORT (a 20-byte header) or ACCESS_PLATFORM (addresses through an IOTLB the driver never fills).
     */
    @Test
    @Timeout(30)
    void featuresTheDriverDoesNotSpeakAreRefused() {
        long v1 = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1);
        for (long f : new long[] {0, NetDriver.WANTED & ~v1, NetDriver.WANTED_SPLIT & ~v1}) {
            assertThatThrownBy(() -> new NetDriver.Options(1, 64, 2048, 1000, f)).as("features 0x%x", f)
                    .isInstanceOf(IllegalArgumentException.class).hasMessageContaining("must include VERSION_1");
            assertThatThrownBy(() -> NetDriver.Options.pairs(1).withFeatures(f)).isInstanceOf(IllegalArgumentException.class);
        }
        for (int bit : new int[] {33, 38, 57, 63}) { // ACCESS_PLATFORM, NOTIFICATION_DATA, HASH_REPORT, ...
            assertThatThrownBy(() -> NetDriver.Options.pairs(1).withFeatures(NetDriver.WANTED | (1L << bit)))
                    .as("bit %d", bit).isInstanceOf(IllegalArgumentException.class)
                    .hasMessageContaining("features the driver does not implement: " + bit);
        }
        assertThat(NetDriver.Options.pairs(1).withFeatures(v1).features()).isEqualTo(v1);
        assertThat(NetDriver.Options.pairs(1).withFeatures(NetDriver.WANTED_SPLIT).features()).isEqualTo(NetDriver.WANTED_SPLIT);
    }

    @Test
    @Timeout(30)
    void noBackendAtAll() {
        assertThatThrownBy(() -> NetDriver.connect(dir.resolve("nobody.sock"), NetDriver.Options.pairs(1)))
                .isInstanceOf(VhostUserException.class).hasMessageContaining("cannot connect");
    }

    // ---- the data path: receive buffers merged with MRG_RXBUF (VIRTIO 1.3, 5.1.6.4) ----

    /** The driver's receive buffer size in these tests: a frame of more than 244 bytes spans buffers. */
    static final int BUF = 256;

    static NetDriver.Options mergeable() {
        return new NetDriver.Options(1, 64, BUF, 1000, NetDriver.WANTED);
    }

    /** {@code len} bytes of a frame, different for each {@code seed}. */
    static byte[] frame(int len, int seed) {
        byte[] f = new byte[len];
        for (int i = 0; i < len; i++) {
            f[i] = (byte) (seed * 31 + i * 7 + 1);
        }
        return f;
    }

    /** The used lengths an honest device gives a frame of {@code len} bytes: every buffer full but the last. */
    static long[] honest(int len) {
        int total = VirtioNet.HDR_SIZE + len;
        long[] lens = new long[(total + BUF - 1) / BUF];
        for (int i = 0; i < lens.length; i++) {
            lens[i] = Math.min(BUF, total - (long) i * BUF);
        }
        return lens;
    }

    /**
     * Takes one RX buffer per entry of {@code usedLens}, writes header ({@code numBuffers}) and {@code frame} across
     * them as a device would, and adds their used entries with {@code usedLens} as lengths; not published.
     */
    static void put(ScriptedRingBackend.Ring rx, byte[] frame, int numBuffers, long... usedLens) throws Exception {
        ByteBuffer all = ByteBuffer.allocate(VirtioNet.HDR_SIZE + frame.length).order(ByteOrder.LITTLE_ENDIAN);
        all.putShort(VirtioNet.HDR_NUM_BUFFERS, (short) numBuffers).position(VirtioNet.HDR_SIZE);
        all.put(frame);
        byte[] bytes = all.array();
        for (int i = 0; i < usedLens.length; i++) {
            ScriptedRingBackend.Buffer b = rx.take();
            assertThat(b.len()).isEqualTo(BUF);
            int from = Math.min(i * BUF, bytes.length);
            rx.write(b, 0, Arrays.copyOfRange(bytes, from, Math.min(from + BUF, bytes.length)));
            rx.use(b, usedLens[i]);
        }
    }

    /** Receives until {@code want} frames came or 2 s passed, then 100 ms more (for frames that should not come). */
    static List<byte[]> receive(NetQueuePair q, int want) throws InterruptedException {
        List<byte[]> got = new ArrayList<>();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment[] bufs = new MemorySegment[8];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(4096);
            }
            int[] lens = new int[bufs.length];
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(2);
            boolean settling = false;
            while (System.nanoTime() < deadline) {
                if (got.size() >= want && !settling) {
                    settling = true;
                    deadline = Math.min(deadline, System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(100));
                }
                int n = q.receive(bufs, lens, bufs.length);
                for (int i = 0; i < n; i++) {
                    got.add(bufs[i].asSlice(0, lens[i]).toArray(ValueLayout.JAVA_BYTE));
                }
                if (n == 0) {
                    Thread.sleep(1);
                }
            }
        }
        return got;
    }

    @Test
    @Timeout(30)
    void mergedFramesArriveWhole() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("merge.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            assertThat(VirtioFeatures.has(nic.features(), VirtioNet.F_MRG_RXBUF)).isTrue();
            ScriptedRingBackend.Ring rx = be.ring(0);
            int[] sizes = {600, BUF - VirtioNet.HDR_SIZE, BUF - VirtioNet.HDR_SIZE + 1, 60, 3 * BUF};
            for (int i = 0; i < sizes.length; i++) {
                put(rx, frame(sizes[i], i), honest(sizes[i]).length, honest(sizes[i]));
            }
            rx.publish();
            List<byte[]> got = receive(nic.pair(0), sizes.length);
            assertThat(got).hasSize(sizes.length);
            for (int i = 0; i < sizes.length; i++) {
                assertThat(got.get(i)).as("frame %d of %d bytes", i, sizes[i]).isEqualTo(frame(sizes[i], i));
            }
            assertThat(nic.pair(0).rxCounters().errors()).isZero();
        }
    }

    /** A 600-byte frame over three buffers (honest lengths 256, 256, 100), with one lie each. */
    static Stream<Arguments> lies() {
        long big = 0xFFFF_FFF0L; // negative as a Java int
        return Stream.of(
                Arguments.of("2nd buffer's used length beyond its buffer", 3, new long[] {BUF, BUF + 100, 100}),
                Arguments.of("3rd buffer's used length beyond its buffer", 3, new long[] {BUF, BUF, BUF + 1}),
                Arguments.of("3rd buffer's used length of 2^32 - 16", 3, new long[] {BUF, BUF, big}),
                Arguments.of("2nd buffer's used length of 2^32 - 16", 3, new long[] {BUF, big, 100}),
                Arguments.of("2nd buffer not used to its end", 3, new long[] {BUF, 100, 100}),
                Arguments.of("first buffer not used to its end", 3, new long[] {200, BUF, 100}),
                Arguments.of("first buffer's used length beyond its buffer", 3, new long[] {BUF + 44, BUF, 100}),
                Arguments.of("last buffer empty", 3, new long[] {BUF, BUF, 0}),
                Arguments.of("num_buffers 0", 0, new long[] {100}),
                Arguments.of("num_buffers larger than the ring", 65535, new long[] {BUF}),
                Arguments.of("num_buffers 1 for a frame longer than the buffer", 1, new long[] {BUF + 100}));
    }

    /**
     * Each lie about a merged frame drops that frame, counted as one error, and consumes exactly the buffers the
     * frame claims (as far as they are in the ring): the honest frame published right after it arrives intact.
     * Before, the driver delivered frames stitched from the lengths it was told (bytes it never received).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("lies")
    @Timeout(30)
    void aLieAboutAMergedFrameCostsThatFrameOnly(String lie, int numBuffers, long[] usedLens) throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("lie.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            ScriptedRingBackend.Ring rx = be.ring(0);
            put(rx, frame(600, 1), numBuffers, usedLens);
            put(rx, frame(100, 2), 1, honest(100));
            rx.publish();
            List<byte[]> got = receive(nic.pair(0), 1);
            assertThat(got).as("frames delivered").hasSize(1);
            assertThat(got.get(0)).as("the honest frame").isEqualTo(frame(100, 2));
            assertThat(nic.pair(0).rxCounters().errors()).as("errors").isEqualTo(1);
            assertThat(nic.pair(0).lastRxError()).as("the reason").isNotNull();
            // and the ring goes on: every buffer came back to the driver
            put(rx, frame(300, 3), 2, honest(300));
            rx.publish();
            assertThat(receive(nic.pair(0), 1)).singleElement().isEqualTo(frame(300, 3));
        }
    }

    /**
     * The device uses a frame's buffers together, so at least num_buffers are in the used ring (VIRTIO 1.3,
     * 5.1.6.4.1): a head claiming three with only two there is dropped and the driver waits for nothing.
     */
    @Test
    @Timeout(30)
    void aFrameWhoseBuffersAreNotAllInTheUsedRingIsDropped() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("short.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            ScriptedRingBackend.Ring rx = be.ring(0);
            put(rx, frame(600, 1), 3, BUF, BUF);
            rx.publish();
            assertThat(receive(nic.pair(0), 0)).isEmpty();
            assertThat(nic.pair(0).rxCounters().errors()).isEqualTo(1);
            assertThat(nic.pair(0).lastRxError()).contains("num_buffers 3").contains("1 more");
            put(rx, frame(100, 2), 1, honest(100));
            rx.publish();
            assertThat(receive(nic.pair(0), 1)).singleElement().isEqualTo(frame(100, 2));
        }
    }

    /** A frame shorter than an Ethernet header is a length error (as Linux's virtio_net counts it), not a frame. */
    @Test
    @Timeout(30)
    void aRuntFrameIsDropped() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("runt.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            ScriptedRingBackend.Ring rx = be.ring(0);
            put(rx, frame(5, 1), 1, VirtioNet.HDR_SIZE + 5);
            put(rx, frame(0, 1), 1, VirtioNet.HDR_SIZE);
            put(rx, frame(100, 2), 1, honest(100));
            rx.publish();
            assertThat(receive(nic.pair(0), 1)).singleElement().isEqualTo(frame(100, 2));
            assertThat(nic.pair(0).rxCounters().errors()).isEqualTo(2);
        }
    }

    // ---- every wait of the driver is bounded ----

    /**
     * The call eventfd's O_NONBLOCK belongs to the open file, which the backend shares: a backend that clears it
     * must not turn the driver's wait for frames into a read(2) that never returns. Before, awaitReceive read the
     * counter after each wait, and with nothing signalled that read blocked for good.
     */
    @Test
    @Timeout(30)
    void awaitReceiveIsBoundedWhenTheBackendMakesItsCallFdBlocking() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("block.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            NetQueuePair q = nic.pair(0);
            be.ring(0).call.setNonBlocking(false);
            AtomicReference<Object> result = new AtomicReference<>();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    result.set(q.awaitReceive(100));
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            try {
                t.join(3000);
                assertThat(t.isAlive()).as("awaitReceive(100) still waiting after 3 s").isFalse();
                assertThat(result.get()).isEqualTo(false);
            } finally {
                be.ring(0).call.signal(); // lets a read(2) that blocked return
                t.join(1000);
            }
        }
    }

    /** Every call the backend signals wakes one wait, and a wait after it has nothing stale to wake it. */
    @Test
    @Timeout(30)
    void awaitReceiveWakesOnEveryCall() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("wake.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            NetQueuePair q = nic.pair(0);
            ScriptedRingBackend.Ring rx = be.ring(0);
            for (int i = 0; i < 5; i++) {
                assertThat(q.awaitReceive(50)).as("round %d: nothing yet", i).isFalse();
                assertAFrameEndsTheWait(q, rx, frame(100, i));
            }
        }
    }

    /** The backend uses one RX buffer for {@code f}: a wait ends at once (well within 2 s) and receives it. */
    private static void assertAFrameEndsTheWait(NetQueuePair q, ScriptedRingBackend.Ring rx, byte[] f)
            throws Exception {
        put(rx, f, 1, honest(f.length));
        rx.publish();
        long t0 = System.nanoTime();
        assertThat(q.awaitReceive(5000)).isTrue();
        assertThat(System.nanoTime() - t0).isLessThan(TimeUnit.SECONDS.toNanos(2));
        assertThat(receive(q, 1)).singleElement().isEqualTo(f);
    }

    /** {@code ring}'s call signalled every 0.2 ms, with nothing used, until closed. */
    private static AutoCloseable callsInALoop(ScriptedRingBackend.Ring ring) {
        java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
        Thread caller = Thread.ofPlatform().daemon().start(() -> {
            while (!stop.get()) {
                ring.call.signal();
                LockSupport.parkNanos(200_000);
            }
        });
        return () -> {
            stop.set(true);
            caller.join(2000);
        };
    }

    /** For 600 ms, each {@code wait} (of 200 ms) returns false and runs to its timeout: at most 4 of them. */
    private static void waitsRunOut(java.util.function.BooleanSupplier wait, String what) {
        int returns = 0;
        long t0 = System.nanoTime();
        while (System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(600)) {
            assertThat(wait.getAsBoolean()).as(what).isFalse();
            returns++;
        }
        assertThat(returns).as("waits of 200 ms in 600 ms").isLessThanOrEqualTo(4);
    }

    /**
     * A backend that signals the RX call in a loop with nothing used does not end a wait: awaitReceive returned true
     * at each call, and a thread waiting on its pair returned, found nothing and waited again as fast as the
     * backend signalled. Now the wait runs to its timeout, and a frame the backend then uses still ends it at once.
     */
    @Test
    @Timeout(30)
    void callsWithNothingUsedDoNotEndAWait() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("spurious.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            NetQueuePair q = nic.pair(0);
            ScriptedRingBackend.Ring rx = be.ring(0);
            try (AutoCloseable calls = callsInALoop(rx)) {
                waitsRunOut(() -> q.awaitReceive(200), "nothing used");
                assertAFrameEndsTheWait(q, rx, frame(100, 7));
            }
        }
    }

    /**
     * A wait for room in the TX ring against a backend that never uses a TX buffer: it times out asleep (its thread's
     * CPU time), and calls the backend signals with nothing used do not end it; the driver asks for a notification
     * of used TX buffers (the ring's NO_INTERRUPT flag cleared) only while it waits on a full ring; a TX buffer the
     * backend then uses ends a wait at once, and a send takes a frame again. An interrupt, close and the backend's
     * hang-up end it as they end a wait for frames. Before, a caller whose send returned 0 could only spin or sleep.
     */
    @Test
    @Timeout(30)
    void awaitSendSleepsUntilTheBackendUsesATxBuffer() throws Exception {
        ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("txfull.sock"));
        try (NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, BUF, 1000, NetDriver.WANTED))) {
            NetQueuePair q = nic.pair(0);
            ScriptedRingBackend.Ring tx = be.ring(1);
            MemorySegment f = MemorySegment.ofArray(frame(100, 1));
            assertThat(q.awaitSend(5000)).as("room at first, without asking").isTrue();
            for (int bad : new int[] {0, 4, -1}) {
                assertThatThrownBy(() -> q.awaitReady(bad, 10)).isInstanceOf(IllegalArgumentException.class)
                        .hasMessageContaining("RX_READY, TX_ROOM or both");
            }
            assertThatThrownBy(() -> q.awaitSend(-1)).isInstanceOf(IllegalArgumentException.class);
            assertThat(tx.availFlags()).as("TX notifications while not waiting").isEqualTo(1);
            int sent = 0;
            while (q.send(f) == 1) {
                sent++;
            }
            assertThat(sent).isEqualTo(64);

            java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
            long cpu = mx.getCurrentThreadCpuTime();
            long t0 = System.nanoTime();
            assertThat(q.awaitSend(500)).as("a backend that never uses a buffer").isFalse();
            assertThat(System.nanoTime() - t0).isGreaterThanOrEqualTo(TimeUnit.MILLISECONDS.toNanos(500));
            assertThat((mx.getCurrentThreadCpuTime() - cpu) / 1_000_000).as("CPU ms of a 500 ms wait").isLessThan(50);
            assertThat(tx.availFlags()).as("TX notifications after the wait").isEqualTo(1);

            try (AutoCloseable calls = callsInALoop(tx)) {
                waitsRunOut(() -> q.awaitSend(200), "calls with nothing used");
            }

            // used while the driver asked for no call, so none came: the look after asking finds it, without a wait
            ScriptedRingBackend.Buffer quiet = tx.take();
            tx.use(quiet, 0);
            tx.publishQuietly();
            assertThat(q.awaitSend(0)).as("a TX buffer used without a call").isTrue();
            assertThat(q.send(f)).isEqualTo(1);

            AtomicReference<Object> end = new AtomicReference<>();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    end.set(q.awaitSend(20_000));
                } catch (Throwable e) {
                    end.set(e);
                }
            });
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (tx.availFlags() != 0 && System.nanoTime() < until) {
                Thread.sleep(1);
            }
            assertThat(tx.availFlags()).as("TX notifications asked for while waiting").isZero();
            ScriptedRingBackend.Buffer b = tx.take();
            tx.use(b, 0);
            t0 = System.nanoTime();
            tx.publish();
            t.join(2000);
            assertThat(t.isAlive()).as("still waiting after the backend used a TX buffer").isFalse();
            assertThat(end.get()).isEqualTo(true);
            assertThat(System.nanoTime() - t0).isLessThan(TimeUnit.SECONDS.toNanos(1));
            assertThat(tx.availFlags()).isEqualTo(1);
            assertThat(q.send(f)).as("room for one").isEqualTo(1);
            assertThat(q.send(f)).isZero();

            for (String how : new String[] {"interrupt", "close"}) {
                NetQueuePair w = how.equals("close") ? nic.pair(1) : q;
                if (w != q) {
                    while (w.send(f) == 1) {
                        // fill pair 1's ring too
                    }
                }
                AtomicReference<Object> e2 = new AtomicReference<>();
                Thread waiter = Thread.ofPlatform().daemon().start(() -> {
                    try {
                        e2.set(w.awaitSend(20_000) + " interrupted " + Thread.currentThread().isInterrupted());
                    } catch (Throwable e) {
                        e2.set(e);
                    }
                });
                Thread.sleep(200); // in its wait
                t0 = System.nanoTime();
                if (how.equals("interrupt")) {
                    waiter.interrupt();
                } else {
                    Thread.ofPlatform().daemon().start(nic::close);
                }
                waiter.join(2000);
                assertThat(waiter.isAlive()).as("%s: still waiting", how).isFalse();
                assertThat(System.nanoTime() - t0).as(how).isLessThan(TimeUnit.SECONDS.toNanos(1));
                assertThat(e2.get()).as(how).isEqualTo("false interrupted " + how.equals("interrupt"));
            }
        } finally {
            be.close();
        }
    }

    /**
     * Calls on the other ring do not wake a wait: a backend that signals the TX call eventfd as fast as it can costs a
     * thread waiting for frames nothing, and one that signals the RX call costs a thread waiting for TX room nothing
     * (the waiting thread's CPU time over 300 ms). Since waits for room joined the TX call to the wait's epoll, every
     * wait watched both, and each call on either woke it to find nothing and sleep again, as fast as the backend
     * signalled.
     */
    @Test
    @Timeout(30)
    void callsOnTheOtherRingDoNotWakeAWait() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("other.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            NetQueuePair q = nic.pair(0);
            MemorySegment f = MemorySegment.ofArray(frame(100, 1));
            assertThat(q.awaitSend(0)).isTrue(); // both waits' epolls made before the calls start
            assertThat(q.awaitReceive(0)).isFalse();
            while (q.send(f) == 1) {
                // the TX ring full: a wait for room waits
            }
            java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
            for (int ring : new int[] {1, 0}) {
                EventFd call = be.ring(ring).call;
                java.util.concurrent.atomic.AtomicBoolean stop = new java.util.concurrent.atomic.AtomicBoolean();
                Thread caller = Thread.ofPlatform().daemon().start(() -> {
                    while (!stop.get()) {
                        call.signal();
                    }
                });
                try {
                    Thread.sleep(20);
                    long cpu = mx.getCurrentThreadCpuTime();
                    boolean woke = ring == 1 ? q.awaitReceive(300) : q.awaitSend(300);
                    long ms = (mx.getCurrentThreadCpuTime() - cpu) / 1_000_000;
                    assertThat(woke).isFalse();
                    assertThat(ms).as("CPU ms of a 300 ms wait for %s while the backend signals the %s call",
                            ring == 1 ? "frames" : "room", ring == 1 ? "TX" : "RX").isLessThan(30);
                } finally {
                    stop.set(true);
                    caller.join(2000);
                }
            }
        }
    }

    /**
     * A disabled pair delivers nothing, so frames left in its RX ring (used just before the backend stopped the
     * ring, or by a backend that goes on using a disabled ring) must not end its waits: awaitReceive returned true
     * at once, again and again, while receive returned 0, and a thread waiting on its pair spun. Now it waits out
     * its timeout (close still ends it), and once the pair is enabled again the frame is there.
     */
    @Test
    @Timeout(30)
    void aDisabledPairWithFramesInItsRingWaitsOutItsTimeout() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("disabled.sock"));
             NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, BUF, 1000, NetDriver.WANTED))) {
            NetQueuePair q = nic.pair(1);
            nic.setQueuePairs(1);
            ScriptedRingBackend.Ring rx = be.ring(2);
            put(rx, frame(100, 1), 1, honest(100));
            rx.publish();
            int returns = 0;
            long t0 = System.nanoTime();
            while (System.nanoTime() - t0 < TimeUnit.MILLISECONDS.toNanos(600)) {
                assertThat(q.awaitReceive(200)).as("a disabled pair has nothing to receive").isFalse();
                returns++;
            }
            assertThat(returns).as("waits of 200 ms in 600 ms").isLessThanOrEqualTo(4);
            nic.setQueuePairs(2);
            assertThat(q.awaitReceive(1000)).isTrue();
            assertThat(receive(q, 1)).singleElement().isEqualTo(frame(100, 1));
        }
    }

    /**
     * A backend that goes away (exits, crashes, is restarted: its end of the vhost-user connection closes) is said so
     * by every path that waits on it: a thread waiting for frames wakes with a VhostUserException, a receive that
     * finds nothing and a send that finds the TX ring full throw it too (each checks the connection, 100 ms apart at
     * most); the frames the backend used before it went are received first. Before, nothing said anything: waits
     * ran to their timeouts, sends returned 0 and receives nothing, for good, as for a backend merely idle.
     */
    @Test
    @Timeout(30)
    void aBackendThatGoesAwayIsSaidSoByWaitsSendsAndReceives() throws Exception {
        ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("gone.sock"));
        try (NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, BUF, 1000, NetDriver.WANTED));
             Arena a = Arena.ofConfined()) {
            NetQueuePair waiting = nic.pair(1);
            AtomicReference<Object> end = new AtomicReference<>();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    end.set(waiting.awaitReceive(20_000));
                } catch (Throwable e) {
                    end.set(e);
                }
            });
            byte[] f = frame(100, 1);
            ScriptedRingBackend.Ring rx = be.ring(0);
            put(rx, f, 1, honest(100));
            rx.publish();
            Thread.sleep(200); // the thread in its wait
            be.close();
            t.join(2000);
            assertThat(t.isAlive()).as("the waiting thread still waits").isFalse();
            assertThat(end.get()).isInstanceOf(VhostUserException.class).asString()
                    .contains("the backend closed the vhost-user connection: queue pair 1");

            NetQueuePair q = nic.pair(0);
            assertThat(q.awaitReceive(1000)).as("the frame used before the backend went").isTrue();
            MemorySegment[] bufs = {a.allocate(2048)};
            int[] lens = new int[1];
            assertThat(q.receive(bufs, lens, 1)).isEqualTo(1);
            assertThat(bufs[0].asSlice(0, lens[0]).toArray(ValueLayout.JAVA_BYTE)).isEqualTo(f);
            assertThatThrownBy(() -> q.awaitReceive(20_000)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("queue pair 0 is served no more");
            assertThat(untilThrown(() -> q.receive(bufs, new int[1], 1))).isInstanceOf(VhostUserException.class);
            MemorySegment out = a.allocate(60);
            assertThat(untilThrown(() -> q.send(out))).isInstanceOf(VhostUserException.class);
            assertThat(q.txCounters().packets()).as("the TX ring's room, then nothing").isEqualTo(64);
            assertThatThrownBy(() -> q.awaitSend(20_000)).as("a wait for TX room").isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("queue pair 0 is served no more");
            assertThatThrownBy(() -> q.awaitReady(NetQueuePair.RX_READY | NetQueuePair.TX_ROOM, 20_000))
                    .isInstanceOf(VhostUserException.class);
        }
    }

    /**
     * The pairs' threads never wait for a control request: pairFor (per frame) and activePairs answer at once while
     * another thread changes the pair count against a backend that takes 400 ms to acknowledge each ring's enable.
     * Before, both took the driver's lock, which setQueuePairs holds through every reply (close for up to three
     * timeouts): each frame's choice of pair waited the whole change out, here 1.6 s.
     */
    @Test
    @Timeout(30)
    void choosingAPairNeverWaitsForAControlRequest() throws Exception {
        java.util.concurrent.atomic.AtomicBoolean slow = new java.util.concurrent.atomic.AtomicBoolean();
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("ctl.sock"),
                m -> slow.get() && m.request() == Request.SET_VRING_ENABLE ? (Object) 400L : null);
             // a timeout the whole change fits in (its replies share one)
             NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, 2048, 2000, NetDriver.WANTED));
             Arena a = Arena.ofConfined()) {
            MemorySegment f = NetDriverContract.frame(a, 0, 1, 100);
            slow.set(true);
            Thread change = Thread.ofPlatform().daemon().start(() -> nic.setQueuePairs(1));
            Thread.sleep(200); // inside setQueuePairs, waiting for the first ack
            assertThat(change.isAlive()).isTrue();
            long t0 = System.nanoTime();
            int pair = nic.pairFor(f);
            int active = nic.activePairs();
            long took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            assertThat(took).as("pairFor and activePairs took (ms) while the pair count changed").isLessThan(200);
            assertThat(pair).as("fewer pairs: the count goes down before the first is disabled").isZero();
            assertThat(active).isEqualTo(1);
            change.join(5000);
            assertThat(nic.activePairs()).isEqualTo(1);
            assertThat(nic.pairFor(f)).isZero();
        }
    }

    /**
     * A backend that refuses to disable a ring (SET_VRING_ENABLE acknowledged with a failure) while the pair count
     * goes down: setQueuePairs throws, and pairFor never chooses a pair that takes nothing. Before, the pair was
     * disabled before its rings were asked, and the new count published only after every ring's reply: the failure
     * left the old count, so pairFor went on sending a flow to the disabled pair for good (its sends take nothing, as
     * a full ring does: a caller waiting for room waited forever); and while a slow backend's replies came, likewise
     * for the whole change.
     */
    @Test
    @Timeout(30)
    void pairForNeverChoosesAPairThatADisableLeftTakingNothing() throws Exception {
        java.util.concurrent.atomic.AtomicBoolean refuse = new java.util.concurrent.atomic.AtomicBoolean();
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("refuse.sock"),
                m -> refuse.get() && m.request() == Request.SET_VRING_ENABLE && m.u32(0) == 3 ? "refused" : null);
             NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, 2048, 1000, NetDriver.WANTED));
             Arena a = Arena.ofConfined()) {
            List<MemorySegment> flows = new ArrayList<>();
            for (int f = 0; f < 16; f++) {
                flows.add(NetDriverContract.frame(a, f, 1, 100));
            }
            assertThat(flows).as("flows on both pairs").anyMatch(f -> nic.pairFor(f) == 1);
            refuse.set(true);
            assertThatThrownBy(() -> nic.setQueuePairs(1)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("refused");
            for (MemorySegment f : flows) {
                int p = nic.pairFor(f);
                assertThat(nic.pair(p).isEnabled()).as("pair " + p + " chosen for a flow, enabled").isTrue();
                assertThat(p).isLessThan(nic.activePairs());
            }
        }
    }

    /**
     * A reply that does not come in time leaves the connection out of step: the backend may still send it, and the
     * driver would take it for the reply to its next request of that kind (an ack is an ack: nothing in it names
     * the request). Here the backend acknowledges a ring's disable only after the timeout, then refuses to enable
     * that ring again: before, the retried setQueuePairs(2) took each ack for the request after it, the late "done"
     * first, and returned normally with pair 1 enabled and chosen for flows, its refusal left unread in the socket.
     * Now every request after the timeout is refused at once, saying why, and the pair count stays where it was.
     */
    @Test
    @Timeout(30)
    void aReplyThatCameTooLateIsNeverTakenForTheNextOne() throws Exception {
        java.util.concurrent.atomic.AtomicInteger phase = new java.util.concurrent.atomic.AtomicInteger();
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("late.sock"), m -> {
            if (m.request() != Request.SET_VRING_ENABLE || m.u32(0) != 3) {
                return null;
            }
            return switch (phase.get()) {
                case 1 -> (Object) 1500L; // the ack of the disable, half a timeout late
                case 2 -> "refused";      // the enable
                default -> null;
            };
        });
             NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(2, 64, 2048, 1000, NetDriver.WANTED));
             Arena a = Arena.ofConfined()) {
            assertThat(nic.protocolFeatures() & (1L << Protocol.PF_REPLY_ACK)).as("acks").isNotZero();
            phase.set(1);
            assertThatThrownBy(() -> nic.setQueuePairs(1)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("no reply");
            Thread.sleep(800); // the late ack is in the socket
            phase.set(2);
            assertThatThrownBy(() -> nic.setQueuePairs(2)).isInstanceOf(VhostUserException.class)
                    .hasMessageContaining("out of step");
            assertThat(nic.activePairs()).isEqualTo(1);
            assertThat(nic.pair(1).isEnabled()).isFalse();
            for (int f = 0; f < 16; f++) {
                assertThat(nic.pairFor(NetDriverContract.frame(a, f, 1, 100))).isZero();
            }
        }
    }

    /** Calls {@code op} until it throws, 2 s at most; what it threw. */
    private static Throwable untilThrown(Runnable op) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(2);
        while (System.nanoTime() < deadline) {
            try {
                op.run();
            } catch (RuntimeException e) {
                return e;
            }
            Thread.sleep(1);
        }
        throw new AssertionError("still no error after 2 s");
    }

    /** A wait without end is refused: the backend may never send. Before, awaitReceive(-1) waited forever. */
    @Test
    @Timeout(30)
    void awaitReceiveRefusesAnEndlessWait() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("endless.sock"));
             NetDriver nic = NetDriver.connect(be.path(), mergeable())) {
            NetQueuePair q = nic.pair(0);
            AtomicReference<Object> result = new AtomicReference<>();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    result.set(q.awaitReceive(-1));
                } catch (Throwable e) {
                    result.set(e);
                }
            });
            try {
                t.join(2000);
                assertThat(result.get()).isInstanceOf(IllegalArgumentException.class);
            } finally {
                be.ring(0).call.signal(); // ends a wait that began
                t.join(1000);
            }
        }
    }

    /**
     * A backend that answers each GET_VRING_BASE just inside the timeout gets one timeout in all to stop the
     * rings, not one per ring. Before, closing 4 pairs against it took 8 replies of 600 ms.
     */
    @Test
    @Timeout(30)
    void closeGivesASlowBackendOneTimeoutInAll() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("slow.sock"),
                m -> m.request() == Request.GET_VRING_BASE ? (Object) 600L : null)) {
            NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(4, 64, 2048, 1000, NetDriver.WANTED));
            long t0 = System.nanoTime();
            nic.close();
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("close took (ms)").isLessThan(2500);
        }
    }

    /**
     * A backend that acknowledges each ring's enable or disable just inside the timeout gets one timeout in all for
     * a change of the pair count, as for the set-up and for close, not one per ring: setQueuePairs holds the driver's
     * lock, and close, called meanwhile from another thread, waits for it. Before, lowering 4 pairs to 1 took 8 acks
     * of 600 ms (and up to 512 timeouts with 256 pairs), and close waited all of it out.
     */
    @Test
    @Timeout(30)
    void aSlowBackendGetsOneTimeoutInAllForAPairCountChange() throws Exception {
        java.util.concurrent.atomic.AtomicBoolean slow = new java.util.concurrent.atomic.AtomicBoolean();
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("slowctl.sock"),
                m -> slow.get() && m.request() == Request.SET_VRING_ENABLE ? (Object) 600L : null)) {
            NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(4, 64, 2048, 1000, NetDriver.WANTED));
            slow.set(true);
            AtomicReference<Object> change = new AtomicReference<>();
            long t0 = System.nanoTime();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    nic.setQueuePairs(1);
                    change.set("returned");
                } catch (Throwable e) {
                    change.set(e);
                }
                change.set(change.get() + " after " + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) + " ms");
            });
            Thread.sleep(200); // inside setQueuePairs, waiting for the first ack
            long c0 = System.nanoTime();
            nic.close();
            long closeTook = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - c0);
            t.join(10_000);
            assertThat(change.get()).as("setQueuePairs").asString()
                    .contains(VhostUserException.class.getName()).contains("deadline");
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("setQueuePairs and close took (ms)")
                    .isLessThan(2500);
            assertThat(closeTook).as("close took (ms)").isLessThan(2500);
        }
    }

    /**
     * The same for turning dirty logging on (a log, LOG_ALL, then every ring's address again with logging): a
     * backend that answers each just inside the timeout gets one timeout in all. Before, with 4 pairs, 10 replies
     * of 600 ms, with close waiting for them.
     */
    @Test
    @Timeout(30)
    void aSlowBackendGetsOneTimeoutInAllToStartDirtyLogging() throws Exception {
        java.util.concurrent.atomic.AtomicBoolean slow = new java.util.concurrent.atomic.AtomicBoolean();
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("slowlog.sock"), m -> switch (m.request()) {
            case GET_FEATURES -> Message.u64Payload(ScriptedRingBackend.FEATURES | (1L << Protocol.F_LOG_ALL));
            case GET_PROTOCOL_FEATURES -> Message.u64Payload(ScriptedRingBackend.PROTOCOL
                    | (1L << Protocol.PF_LOG_SHMFD));
            case SET_LOG_BASE -> Message.u64Payload(0); // its reply, asked for or not
            default -> slow.get() ? (Object) 600L : null;
        })) {
            NetDriver nic = NetDriver.connect(be.path(), new NetDriver.Options(4, 64, 2048, 1000, NetDriver.WANTED));
            slow.set(true);
            AtomicReference<Object> change = new AtomicReference<>();
            long t0 = System.nanoTime();
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    nic.setDirtyLog(true);
                    change.set("returned");
                } catch (Throwable e) {
                    change.set(e);
                }
                change.set(change.get() + " after " + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) + " ms");
            });
            Thread.sleep(200); // inside setDirtyLog, waiting for the first reply
            long c0 = System.nanoTime();
            nic.close();
            long closeTook = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - c0);
            t.join(10_000);
            assertThat(change.get()).as("setDirtyLog").asString()
                    .contains(VhostUserException.class.getName()).contains("deadline");
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("setDirtyLog and close took (ms)")
                    .isLessThan(2500);
            assertThat(closeTook).as("close took (ms)").isLessThan(2500);
        }
    }

    /**
     * A backend that clears O_NONBLOCK on a kick eventfd (the flag is on the open file it shares with us) and fills
     * the counter: the kick write would wait for good. The eventfd watchdog releases it within about 100 ms, the
     * pair says why in {@link NetQueuePair#fault()} and kicks no more, and close stays bounded.
     */
    @Test
    @Timeout(30)
    void aBackendThatBlocksAKickHoldsTheSenderBrieflyOnly() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("kick.sock"));
             Arena a = Arena.ofConfined()) {
            NetDriver nic = NetDriver.connect(be.path(), mergeable());
            try {
                NetQueuePair q = nic.pair(0);
                EventFd kick = be.ring(1).kick;
                MemorySegment max = a.allocate(8);
                max.set(ValueLayout.JAVA_LONG, 0, 0xffff_ffff_ffff_fffeL); // the most an eventfd holds
                do {
                    kick.drain();
                } while (kick.write(max) != 8);
                kick.setNonBlocking(false);
                long t0 = System.nanoTime();
                assertThat(q.send(MemorySegment.ofArray(frame(60, 1)))).isEqualTo(1);
                assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("send with a blocked kick (ms)")
                        .isLessThan(1000);
                assertThat(q.fault()).contains("O_NONBLOCK");
                t0 = System.nanoTime();
                q.send(MemorySegment.ofArray(frame(60, 2)));
                assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("the next send (ms)").isLessThan(100);
            } finally {
                long t0 = System.nanoTime();
                nic.close();
                assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).as("close took (ms)").isLessThan(3000);
            }
        }
    }
}
