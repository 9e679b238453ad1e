package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.catchThrowable;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Supplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A queue pair used wrongly by the application, as a library's caller can: buffers it cannot write into, arrays that
 * do not hold what it says. Each is a clear exception, and the pair goes on as before. Over our loopback backend:
 * every frame sent comes back on the pair's RX ring.
 */
@Timeout(60)
class NetQueuePairMisuseTest {
    /** A small ring: a misuse that loses an RX buffer shows after this many calls. */
    static final int RING = 8;

    @TempDir
    Path dir;
    private NetDevice device;
    private VhostUserServer server;
    private NetDriver nic;
    private final Arena arena = Arena.ofShared();

    @BeforeEach
    void connect() {
        device = new NetDevice(NetDevice.Config.of("loop", 2), new LoopbackBackend(2, 1500));
        server = VhostUserServer.listen(dir.resolve("loop.sock"), device);
        nic = NetDriver.connect(server.path(), new NetDriver.Options(2, RING, 2048, 2000, NetDriver.WANTED));
    }

    @AfterEach
    void close() {
        nic.close();
        server.close();
        device.close();
        arena.close();
    }

    /** Sends {@code f} and waits until it is back in the pair's RX ring. */
    private void loop(NetQueuePair q, MemorySegment f) {
        assertThat(q.send(f)).isEqualTo(1);
        assertThat(q.awaitReceive(5000)).as("the frame came back").isTrue();
    }

    /**
     * A receive into a buffer the copy cannot write (read-only: what a read-only ByteBuffer gives; of a closed
     * arena; null), or with fewer buffers or lengths than it asks frames for, is refused before a frame is taken:
     * the frame stays for the next receive, whole. Before, the frame's RX buffer was reaped, the copy (or the array
     * store) threw, and the buffer was never posted again: the frame was lost and, once as many such calls as the
     * ring has buffers had come, the pair received nothing more, for good.
     */
    @Test
    void aReceiveIntoBuffersItCannotWriteTakesNoFrameAndTheRingKeepsItsBuffers() {
        NetQueuePair q = nic.pair(0);
        MemorySegment closed = ofAClosedArena(2048);
        Map<String, Supplier<Integer>> misuses = new LinkedHashMap<>();
        misuses.put("read-only segment", () -> q.receive(new MemorySegment[] {arena.allocate(2048).asReadOnly()},
                new int[1], 1));
        misuses.put("read-only ByteBuffer", () -> q.receive(ByteBuffer.allocate(2048).asReadOnlyBuffer()));
        misuses.put("closed arena", () -> q.receive(new MemorySegment[] {closed}, new int[1], 1));
        misuses.put("null buffer", () -> q.receive(new MemorySegment[1], new int[1], 1));
        misuses.put("fewer buffers", () -> q.receive(new MemorySegment[0], new int[1], 1));
        misuses.put("fewer lengths", () -> q.receive(new MemorySegment[] {arena.allocate(2048)}, new int[0], 1));
        misuses.put("negative count", () -> q.receive(new MemorySegment[1], new int[1], -1));
        MemorySegment[] bufs = {arena.allocate(2048)};
        int[] lens = new int[1];
        int seq = 0;
        for (Map.Entry<String, Supplier<Integer>> m : misuses.entrySet()) {
            for (int i = 0; i < 2 * RING; i++) {
                MemorySegment f = NetDriverContract.frame(arena, 0, seq++, 100);
                loop(q, f);
                Throwable refused = catchThrowable(m.getValue()::get);
                assertThat(q.receive(bufs, lens, 1)).as("%s, call %d: the frame is still there", m.getKey(), i)
                        .isEqualTo(1);
                assertThat(NetDriverContract.sameBytes(bufs[0], f, 100)).isTrue();
                assertThat(lens[0]).isEqualTo(100);
                assertThat(refused).as("%s, call %d", m.getKey(), i).isInstanceOf(IllegalArgumentException.class)
                        .hasMessageStartingWith("receive");
            }
        }
        assertThat(q.rxCounters().errors()).isZero();
    }

    /**
     * A burst with a frame that cannot be sent (too short, too long, null, of a closed arena) or fewer frames than it
     * says is refused whole, before any frame goes into the ring. Before, the frames ahead of the bad one were sent
     * and the call threw: the caller got an exception instead of a count and could not tell which had gone (sent
     * again, they went twice).
     */
    @Test
    void aBurstWithAFrameThatCannotBeSentSendsNothing() {
        NetQueuePair q = nic.pair(0);
        MemorySegment closed = ofAClosedArena(100);
        MemorySegment good = NetDriverContract.frame(arena, 0, 1, 100);
        Map<String, Supplier<Integer>> bursts = new LinkedHashMap<>();
        bursts.put("a runt", () -> q.send(new MemorySegment[] {good, good, arena.allocate(13)}, 0, 3));
        bursts.put("a frame too long", () -> q.send(new MemorySegment[] {good, arena.allocate(q.maxFrame() + 1)}, 0, 2));
        bursts.put("a null", () -> q.send(new MemorySegment[] {good, null}, 0, 2));
        bursts.put("a closed arena", () -> q.send(new MemorySegment[] {good, closed}, 0, 2));
        bursts.put("fewer frames", () -> q.send(new MemorySegment[] {good, good}, 1, 2));
        for (Map.Entry<String, Supplier<Integer>> b : bursts.entrySet()) {
            assertThat(catchThrowable(b.getValue()::get)).as(b.getKey()).isInstanceOfAny(IllegalArgumentException.class,
                    IndexOutOfBoundsException.class);
            assertThat(q.txCounters().packets()).as("frames sent by a burst with %s", b.getKey()).isZero();
        }
        assertThat(q.send(new MemorySegment[] {good, good}, 0, 2)).isEqualTo(2);
    }

    /**
     * A second thread calling into a pair while another thread is inside a call on it (here a FrameWriter that
     * waits) is refused with a clear IllegalStateException and touches nothing; once the first has left, the pair
     * may pass to the second. Before, the second call ran the ring alongside the first, unguarded: it took the
     * first's call for its own re-entry, so nothing kept the two from corrupting the ring's state, and close,
     * seeing the first leave, released the pair's memory and eventfds under the second.
     */
    @Test
    void aSecondThreadIsRefusedWhileAnotherIsInsideACallOnThePair() throws Exception {
        NetQueuePair q = nic.pair(0);
        MemorySegment f = NetDriverContract.frame(arena, 0, 1, 100);
        CountDownLatch inside = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        AtomicReference<Throwable> firstEnd = new AtomicReference<>();
        Thread first = Thread.ofPlatform().name("first").daemon().start(() -> {
            try {
                q.sendInPlace(1, (buf, i) -> {
                    inside.countDown();
                    awaitQuietly(release);
                    MemorySegment.copy(f, 0, buf, 0, 100);
                    return 100;
                });
            } catch (Throwable t) {
                firstEnd.set(t);
            }
        });
        try {
            assertThat(inside.await(5, TimeUnit.SECONDS)).isTrue();
            Map<String, Supplier<Object>> calls = new LinkedHashMap<>();
            calls.put("send", () -> q.send(f));
            calls.put("send ByteBuffer", () -> q.send(ByteBuffer.allocate(60)));
            calls.put("sendInPlace", () -> q.sendInPlace(1, (buf, i) -> 60));
            calls.put("sendWithChecksumOffload", () -> q.sendWithChecksumOffload(f, 34, 6));
            calls.put("receive", () -> q.receive(new MemorySegment[] {arena.allocate(2048)}, new int[1], 1));
            calls.put("receive ByteBuffer", () -> q.receive(ByteBuffer.allocate(2048)));
            calls.put("awaitReceive", () -> q.awaitReceive(10));
            calls.put("awaitSend", () -> q.awaitSend(10));
            calls.put("awaitReady", () -> q.awaitReady(NetQueuePair.RX_READY | NetQueuePair.TX_ROOM, 10));
            for (Map.Entry<String, Supplier<Object>> c : calls.entrySet()) {
                assertThat(catchThrowable(c.getValue()::get)).as(c.getKey()).isInstanceOf(IllegalStateException.class)
                        .hasMessageContaining("queue pair 0 is in use by another thread").hasMessageContaining("first");
            }
            assertThat(q.txCounters().packets()).as("nothing sent by the refused calls").isZero();
        } finally {
            release.countDown();
            first.join(5000);
        }
        assertThat(firstEnd.get()).isNull();
        assertThat(q.txCounters().packets()).isEqualTo(1);
        // the first has left: the pair is this thread's now
        assertThat(q.awaitReceive(5000)).isTrue();
        MemorySegment[] bufs = {arena.allocate(2048)};
        int[] lens = new int[1];
        assertThat(q.receive(bufs, lens, 1)).isEqualTo(1);
        assertThat(NetDriverContract.sameBytes(bufs[0], f, 100)).isTrue();
    }

    /**
     * close() called back from a pair's own call (its FrameWriter) does not wait for that call to end, which cannot
     * happen while close runs: it returns at once, the pair left as one whose thread did not leave (its memory gone
     * behind the arena, its eventfds open), and the call ends with an IllegalStateException. Before, close waited
     * the driver's whole timeout for its own thread.
     */
    @Test
    void closeFromInsideAPairsCallDoesNotWaitForItself() {
        NetQueuePair q = nic.pair(0);
        long[] took = new long[1];
        Throwable end = catchThrowable(() -> q.sendInPlace(1, (buf, i) -> {
            long t0 = System.nanoTime();
            nic.close();
            took[0] = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            return 60;
        }));
        assertThat(took[0]).as("close took (ms), the driver's timeout 2000").isLessThan(1000);
        assertThat(end).isInstanceOf(IllegalStateException.class);
        assertThat(catchThrowable(() -> q.send(NetDriverContract.frame(arena, 0, 1, 60))))
                .isInstanceOf(IllegalStateException.class).hasMessage("driver closed");
    }

    /**
     * An interrupt ends a thread's wait for frames (false, its interrupt status kept), whether the pair is enabled or
     * not, and a thread already interrupted does not wait; a frame waiting still ends the wait with true, and the
     * pair goes on once the status is cleared. Before, the interrupt was kept but the wait went on to its timeout
     * (with awaitReceive(Integer.MAX_VALUE), 24 days: an executor's shutdownNow could not stop the thread).
     */
    @Test
    void anInterruptEndsAWaitForFrames() throws Exception {
        for (boolean enabled : new boolean[] {true, false}) {
            nic.setQueuePairs(enabled ? 2 : 1);
            NetQueuePair q = nic.pair(1);
            AtomicReference<String> end = new AtomicReference<>();
            CountDownLatch started = new CountDownLatch(1);
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                started.countDown();
                long t0 = System.nanoTime();
                boolean got = q.awaitReceive(20_000);
                end.set(got + " after " + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) + " ms, interrupted "
                        + Thread.currentThread().isInterrupted());
            });
            assertThat(started.await(5, TimeUnit.SECONDS)).isTrue();
            Thread.sleep(200); // in epoll_wait by now
            long t0 = System.nanoTime();
            t.interrupt();
            t.join(5000);
            assertThat(t.isAlive()).as("enabled %s: the interrupted thread still waits", enabled).isFalse();
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(1000);
            assertThat(end.get()).as("enabled %s", enabled).startsWith("false").endsWith("interrupted true");
        }
        nic.setQueuePairs(2);
        NetQueuePair q = nic.pair(1);
        Thread.currentThread().interrupt();
        try {
            long t0 = System.nanoTime();
            assertThat(q.awaitReceive(20_000)).isFalse();
            assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(1000);
            assertThat(Thread.currentThread().isInterrupted()).isTrue();
            MemorySegment f = NetDriverContract.frame(arena, 1, 1, 100);
            assertThat(q.send(f)).isEqualTo(1);
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
            while (!q.awaitReceive(0) && System.nanoTime() < until) {
                Thread.onSpinWait();
            }
            assertThat(q.awaitReceive(20_000)).as("a frame waiting ends the wait, interrupted or not").isTrue();
        } finally {
            Thread.interrupted();
        }
        MemorySegment[] bufs = {arena.allocate(2048)};
        assertThat(q.receive(bufs, new int[1], 1)).isEqualTo(1);
        loop(q, NetDriverContract.frame(arena, 1, 2, 100));
        assertThat(q.receive(bufs, new int[1], 1)).isEqualTo(1);
    }

    /**
     * A signal delivered to a thread waiting for frames (a profiler's SIGPROF; here SIGWINCH, with a handler) makes
     * epoll_wait fail with EINTR: the wait goes on to its timeout. Before, Epoll.await's 0 for EINTR was taken for
     * the timeout, and the wait ended at once, false, as if it had timed out.
     */
    @Test
    void aSignalDoesNotEndAWaitForFrames() throws Throwable {
        Linker linker = Linker.nativeLinker();
        MethodHandle gettid = linker.downcallHandle(linker.defaultLookup().find("gettid").orElseThrow(),
                FunctionDescriptor.of(ValueLayout.JAVA_INT));
        MethodHandle tgkill = linker.downcallHandle(linker.defaultLookup().find("tgkill").orElseThrow(),
                FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT,
                        ValueLayout.JAVA_INT));
        sun.misc.Signal winch = new sun.misc.Signal("WINCH");
        sun.misc.SignalHandler before = sun.misc.Signal.handle(winch, sig -> {});
        try {
            NetQueuePair q = nic.pair(0);
            AtomicReference<String> end = new AtomicReference<>();
            CountDownLatch started = new CountDownLatch(1);
            int[] tid = new int[1];
            Thread t = Thread.ofPlatform().daemon().start(() -> {
                try {
                    tid[0] = (int) gettid.invokeExact();
                } catch (Throwable e) {
                    throw new AssertionError(e);
                }
                started.countDown();
                long t0 = System.nanoTime();
                boolean got = q.awaitReceive(1500);
                end.set(got + " after " + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) + " ms");
            });
            assertThat(started.await(5, TimeUnit.SECONDS)).isTrue();
            for (int i = 0; i < 10 && t.isAlive(); i++) {
                Thread.sleep(100);
                assertThat((int) tgkill.invokeExact((int) ProcessHandle.current().pid(), tid[0], 28)).isZero();
            }
            t.join(5000);
            assertThat(end.get()).startsWith("false after ");
            assertThat(Long.parseLong(end.get().replaceAll("\\D", ""))).as(end.get()).isGreaterThanOrEqualTo(1500);
        } finally {
            sun.misc.Signal.handle(winch, before);
        }
    }

    /**
     * A frame larger than a send can take, for a checksum the driver completes itself (the backend without CSUM),
     * is refused before anything is copied: here a 1 TiB slice of a sparse mapping, a caller's mistake (a whole
     * mapped file for one frame). Before, the driver first allocated a copy of it (OutOfMemoryError: 1 TiB; a
     * slice of some GiB was copied into as much fresh memory and summed) and only then refused its length.
     */
    @Test
    void aFrameTooLargeForChecksumOffloadIsRefusedBeforeItIsCopied() {
        nic.close();
        nic = NetDriver.connect(server.path(), new NetDriver.Options(2, RING, 2048, 2000,
                NetDriver.WANTED & ~VirtioFeatures.bit(VirtioNet.F_CSUM)));
        NetQueuePair q = nic.pair(0);
        long huge = 1L << 40;
        try (MemFd file = MemFd.create("misuse-huge-frame", huge); Mmap map = Mmap.shared(file, 0, huge)) {
            assertThat(catchThrowable(() -> q.sendWithChecksumOffload(map.segment(), 34, 6)))
                    .isInstanceOf(IllegalArgumentException.class).hasMessage("frame of " + huge + " bytes: must be 14.."
                            + q.maxFrame());
        }
        assertThat(q.txCounters().packets()).isZero();
        MemorySegment f = NetDriverContract.frame(arena, 0, 1, 100);
        assertThat(q.sendWithChecksumOffload(f, 34, 6)).isEqualTo(1);
    }

    private static void awaitQuietly(CountDownLatch l) {
        try {
            l.await(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** A segment of {@code bytes} whose arena is closed already. */
    private static MemorySegment ofAClosedArena(long bytes) {
        try (Arena gone = Arena.ofConfined()) {
            return gone.allocate(bytes);
        }
    }
}
