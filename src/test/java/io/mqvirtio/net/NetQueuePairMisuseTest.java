package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.catchThrowable;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
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
        device = new NetDevice(NetDevice.Config.of("loop", 1), new LoopbackBackend(1, 1500));
        server = VhostUserServer.listen(dir.resolve("loop.sock"), device);
        nic = NetDriver.connect(server.path(), new NetDriver.Options(1, RING, 2048, 2000, NetDriver.WANTED));
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
        Arena gone = Arena.ofConfined();
        MemorySegment closed = gone.allocate(2048);
        gone.close();
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
}
