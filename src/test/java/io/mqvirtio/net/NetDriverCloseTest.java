package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link NetDriver#close()} from one thread while other threads use their queue pairs: the memory shared with the
 * backend is unmapped only when no pair can touch it any more, the pairs' threads get a clear
 * {@link IllegalStateException} instead of a crash, and close waits a bounded time for a pair that does not leave.
 */
class NetDriverCloseTest {
    /** The driver's timeout here: how long close waits for a pair's thread to leave its call. */
    static final int TIMEOUT_MS = 1000;

    @TempDir
    Path dir;

    static NetDriver.Options options(int pairs) {
        return new NetDriver.Options(pairs, 256, 2048, TIMEOUT_MS, NetDriver.WANTED);
    }

    /**
     * Four threads run traffic (copying and in-place sends, receives, waits for frames) on their pairs against our
     * loopback backend while another closes the driver: each ends with "driver closed", none crashes the JVM.
     * Before, close unmapped the memory under them (a SIGSEGV), or they went on forever with a disabled pair.
     */
    @Test
    @Timeout(60)
    void closeWhilePairsRunTraffic() throws Exception {
        int pairs = 4;
        try (NetDevice device = new NetDevice(NetDevice.Config.of("loop", pairs), new LoopbackBackend(pairs, 1500));
             VhostUserServer server = VhostUserServer.listen(dir.resolve("loop.sock"), device)) {
            NetDriver nic = NetDriver.connect(server.path(), options(pairs));
            try {
                List<Thread> threads = new ArrayList<>();
                List<AtomicReference<Throwable>> ends = new ArrayList<>();
                CountDownLatch running = new CountDownLatch(pairs);
                for (int p = 0; p < pairs; p++) {
                    NetQueuePair q = nic.pair(p);
                    AtomicReference<Throwable> end = new AtomicReference<>();
                    ends.add(end);
                    threads.add(Thread.ofPlatform().name("pair-" + p).daemon().start(() -> {
                        try (Arena a = Arena.ofConfined()) {
                            MemorySegment f = NetDriverContract.frame(a, q.index(), 1, 1400);
                            MemorySegment[] bufs = new MemorySegment[4];
                            for (int i = 0; i < bufs.length; i++) {
                                bufs[i] = a.allocate(2048);
                            }
                            int[] lens = new int[bufs.length];
                            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
                            for (long i = 0; System.nanoTime() < deadline; i++) {
                                q.send(f);
                                q.sendInPlace(8, (buf, k) -> {
                                    MemorySegment.copy(f, 0, buf, 0, f.byteSize());
                                    return (int) f.byteSize();
                                });
                                q.receive(bufs, lens, bufs.length);
                                if (i % 64 == 0) {
                                    q.awaitReceive(1);
                                }
                                if (i == 1000) {
                                    running.countDown();
                                }
                            }
                            end.set(new AssertionError("still running 20 s later"));
                        } catch (Throwable t) {
                            end.set(t);
                        } finally {
                            running.countDown();
                        }
                    }));
                }
                assertThat(running.await(20, TimeUnit.SECONDS)).as("traffic on every pair").isTrue();
                long t0 = System.nanoTime();
                nic.close();
                long took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                assertThat(took).as("close took (ms)").isLessThan(3 * TIMEOUT_MS);
                for (int p = 0; p < pairs; p++) {
                    threads.get(p).join(10_000);
                    assertThat(threads.get(p).isAlive()).as("pair %d's thread ended", p).isFalse();
                    assertThat(ends.get(p).get()).as("how pair %d's thread ended", p)
                            .isInstanceOf(IllegalStateException.class).hasMessage("driver closed");
                }
            } finally {
                nic.close(); // idempotent: for a test that failed before its own close
            }
        }
    }

    /** After close, every pair operation says so, in one way; what is only counters still reads. */
    @Test
    @Timeout(30)
    void everyPairOperationAfterCloseSaysDriverClosed() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("s.sock")); Arena a = Arena.ofConfined()) {
            NetDriver nic = NetDriver.connect(be.path(), options(1));
            try {
                NetQueuePair q = nic.pair(0);
                MemorySegment f = a.allocate(60);
                nic.close();
                nic.close(); // again: nothing happens
                List<Runnable> ops = List.of(
                        () -> q.send(f),
                        () -> q.send(ByteBuffer.allocate(60)),
                        () -> q.send(new MemorySegment[] {f}, 0, 1),
                        () -> q.sendInPlace(1, (buf, i) -> 60),
                        () -> q.sendWithChecksumOffload(f, 34, 6),
                        () -> q.receive(new MemorySegment[] {a.allocate(2048)}, new int[1], 1),
                        () -> q.receive(ByteBuffer.allocate(2048)),
                        () -> q.awaitReceive(10));
                for (int i = 0; i < ops.size(); i++) {
                    assertThatThrownBy(ops.get(i)::run).as("operation %d", i).isInstanceOf(IllegalStateException.class)
                            .hasMessage("driver closed");
                }
                assertThat(q.txCounters().packets()).isZero();
                assertThatThrownBy(() -> nic.setQueuePairs(1)).hasMessage("driver closed");
            } finally {
                nic.close(); // idempotent: for a test that failed before its own close
            }
        }
    }

    /**
     * A thread waiting for frames is woken by close and does not keep close waiting; its wait was entered before
     * close, so it returns, and its next call says the driver is closed. Before, it slept on in epoll_wait on a
     * closed descriptor for the rest of its 10 s.
     */
    @Test
    @Timeout(30)
    void closeWakesAPairWaitingForFrames() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("w.sock"))) {
            NetDriver nic = NetDriver.connect(be.path(), options(1));
            try {
                NetQueuePair q = nic.pair(0);
                CountDownLatch waiting = new CountDownLatch(1);
                AtomicReference<Throwable> end = new AtomicReference<>();
                Thread t = Thread.ofPlatform().daemon().start(() -> {
                    try {
                        q.awaitReceive(0);
                        waiting.countDown();
                        q.awaitReceive(10_000);
                        q.awaitReceive(10_000);
                    } catch (Throwable e) {
                        end.set(e);
                    }
                });
                assertThat(waiting.await(5, TimeUnit.SECONDS)).isTrue();
                Thread.sleep(200); // in epoll_wait by now
                long t0 = System.nanoTime();
                nic.close();
                t.join(2000);
                assertThat(t.isAlive()).as("the waiting thread still waits").isFalse();
                assertThat(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isLessThan(2000);
                assertThat(end.get()).isInstanceOf(IllegalStateException.class).hasMessage("driver closed");
            } finally {
                nic.close(); // idempotent: for a test that failed before its own close
            }
        }
    }

    /**
     * A pair's thread that does not leave its call (a FrameWriter stuck inside sendInPlace) keeps close waiting for
     * the driver's timeout only. Its memory then goes (the segments it holds fail with IllegalStateException, they
     * cannot reach unmapped memory), its descriptors stay open (a late kick must not hit a reused number), and when
     * it wakes, it gets an exception, not a crash. Before, close unmapped at once and the thread's next write into
     * its TX buffer crashed the JVM.
     */
    @Test
    @Timeout(30)
    void closeWaitsBoundedForAPairStuckInItsCall() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("stuck.sock"));
             LogCapture log = new LogCapture(NetDriver.class.getName(), java.util.logging.Level.WARNING)) {
            NetDriver nic = NetDriver.connect(be.path(), options(1));
            try {
                NetQueuePair q = nic.pair(0);
                CountDownLatch inside = new CountDownLatch(1);
                CountDownLatch release = new CountDownLatch(1);
                AtomicReference<Throwable> end = new AtomicReference<>();
                Thread t = Thread.ofPlatform().daemon().start(() -> {
                    try {
                        q.sendInPlace(1, (buf, i) -> {
                            inside.countDown();
                            awaitQuietly(release);
                            buf.set(ValueLayout.JAVA_BYTE, 0, (byte) 1); // its buffer, after close
                            return 60;
                        });
                    } catch (Throwable e) {
                        end.set(e);
                    }
                });
                long took;
                try {
                    assertThat(inside.await(5, TimeUnit.SECONDS)).isTrue();
                    long t0 = System.nanoTime();
                    nic.close();
                    took = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
                } finally {
                    release.countDown();
                }
                t.join(5000);
                assertThat(took).as("close took (ms)").isBetween((long) TIMEOUT_MS - 50, 3L * TIMEOUT_MS);
                assertThat(log.lines()).anyMatch(l -> l.contains("pair 0") && l.contains("did not leave"));
                assertThat(t.isAlive()).isFalse();
                assertThat(end.get()).as("what the stuck thread got when it woke")
                        .isInstanceOf(IllegalStateException.class);
                assertThatThrownBy(() -> q.send(MemorySegment.ofArray(new byte[60]))).hasMessage("driver closed");
            } finally {
                nic.close(); // idempotent: for a test that failed before its own close
            }
        }
    }

    /**
     * A pair's thread that holds its TX buffer in a native call (a FrameWriter blocked in read(2) into it) when close
     * gives up waiting: the memory cannot be released under the call, so it stays mapped (logged) and the call ends
     * well when it ends.
     */
    @Test
    @Timeout(30)
    void memoryHeldByANativeCallStaysMapped() throws Exception {
        try (ScriptedRingBackend be = new ScriptedRingBackend(dir.resolve("native.sock"));
             EventFd blocking = EventFd.create(); LogCapture log = new LogCapture(NetDriver.class.getName(), java.util.logging.Level.WARNING)) {
            blocking.setNonBlocking(false);
            NetDriver nic = NetDriver.connect(be.path(), options(1));
            try {
                NetQueuePair q = nic.pair(0);
                CountDownLatch inside = new CountDownLatch(1);
                AtomicReference<Object> end = new AtomicReference<>();
                Thread t = Thread.ofPlatform().daemon().start(() -> {
                    try {
                        end.set(q.sendInPlace(1, (buf, i) -> {
                            inside.countDown();
                            blocking.read(buf.asSlice(0, 8)); // the segment is held for the call's duration
                            return 60;
                        }));
                    } catch (Throwable e) {
                        end.set(e);
                    }
                });
                try {
                    assertThat(inside.await(5, TimeUnit.SECONDS)).isTrue();
                    Thread.sleep(100); // in read(2) by now
                    nic.close();
                } finally {
                    blocking.signal();
                }
                t.join(5000);
                assertThat(log.lines()).anyMatch(l -> l.contains("stay mapped"));
                assertThat(t.isAlive()).isFalse();
                assertThat(end.get()).as("the call that was in flight").isEqualTo(1);
                assertThatThrownBy(() -> q.receive(ByteBuffer.allocate(2048))).hasMessage("driver closed");
            } finally {
                nic.close(); // idempotent: for a test that failed before its own close
            }
        }
    }

    private static void awaitQuietly(CountDownLatch l) {
        try {
            l.await(20, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
