package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

@Timeout(10)
class IoVecTest {
    @Test
    void gathersAndScattersAcrossSegments() {
        try (Arena a = Arena.ofConfined(); UnixSocket.Pair p = UnixSocket.pair();
                MemFd mem = MemFd.create("guest", 1 << 16); Mmap guest = Mmap.shared(mem, 0, 1 << 16)) {
            // Source: three pieces scattered over "guest memory", as a descriptor chain would be.
            MemorySegment g = guest.segment();
            byte[] expected = new byte[12 + 100 + 1400];
            for (int i = 0; i < expected.length; i++) {
                expected[i] = (byte) (i ^ (i >> 8));
            }
            MemorySegment.copy(expected, 0, g, ValueLayout.JAVA_BYTE, 40_000, 12);
            MemorySegment.copy(expected, 12, g, ValueLayout.JAVA_BYTE, 100, 100);
            MemorySegment.copy(expected, 112, g, ValueLayout.JAVA_BYTE, 8192, 1400);

            IoVec out = new IoVec(4);
            assertThat(out.add(g, 40_000, 12)).isTrue();
            assertThat(out.add(g.asSlice(100, 100))).isTrue();
            assertThat(out.add(g, 8192, 1400)).isTrue();
            assertThat(out.count()).isEqualTo(3);
            assertThat(out.totalBytes()).isEqualTo(expected.length);
            assertThat(IoVec.writev(p.first(), out)).isEqualTo(expected.length);

            // Destination: split at different boundaries than the source.
            MemorySegment d1 = a.allocate(7), d2 = a.allocate(500), d3 = a.allocate(2000);
            IoVec in = new IoVec(3);
            in.add(d1);
            in.add(d2);
            in.add(d3);
            assertThat(IoVec.readv(p.second(), in)).isEqualTo(expected.length);
            byte[] got = new byte[expected.length];
            MemorySegment.copy(d1, ValueLayout.JAVA_BYTE, 0, got, 0, 7);
            MemorySegment.copy(d2, ValueLayout.JAVA_BYTE, 0, got, 7, 500);
            MemorySegment.copy(d3, ValueLayout.JAVA_BYTE, 0, got, 507, expected.length - 507);
            assertThat(got).isEqualTo(expected);
        }
    }

    /**
     * copyTo moves exactly the entries' bytes for every length up to 300 (the frames the copying sink and the io_uring
     * TX slots take; a faster short copy was tried against this), never a byte before or past the destination range,
     * at several alignments of source and destination, and stops exactly at its limit.
     */
    @Test
    void copyToIsExactForEveryLengthAndAlignment() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment src = a.allocate(1024, 64);
            for (int i = 0; i < 1024; i++) {
                src.set(ValueLayout.JAVA_BYTE, i, (byte) (i * 7 + 3));
            }
            MemorySegment dst = a.allocate(1024, 64);
            for (int len = 0; len <= 300; len++) {
                for (int off : new int[] {0, 1, 5, 12, 63}) {
                    dst.fill((byte) 0x5a);
                    IoVec v = new IoVec(2);
                    int first = len / 3;
                    v.add(src, off, first);
                    v.add(src, off + first + 40, len - first);
                    assertThat(v.copyTo(dst, off + 3, 1000)).isEqualTo(len);
                    for (int i = 0; i < 1024; i++) {
                        int rel = i - (off + 3);
                        byte want = rel < 0 || rel >= len ? (byte) 0x5a
                                : src.get(ValueLayout.JAVA_BYTE, rel < first ? off + rel : off + 40 + rel);
                        assertThat(dst.get(ValueLayout.JAVA_BYTE, i)).as("len %d off %d byte %d", len, off, i).isEqualTo(want);
                    }
                }
            }
            // a limit below the entries' total stops the copy exactly there
            IoVec v = new IoVec(1);
            v.add(src, 0, 200);
            dst.fill((byte) 0);
            assertThat(v.copyTo(dst, 0, 77)).isEqualTo(77);
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 76)).isEqualTo(src.get(ValueLayout.JAVA_BYTE, 76));
            assertThat(dst.get(ValueLayout.JAVA_BYTE, 77)).isZero();
        }
    }

    @Test
    void rawAddressesGoThroughLikeSegments() {
        try (Arena a = Arena.ofConfined(); UnixSocket.Pair p = UnixSocket.pair()) {
            MemorySegment src = a.allocateFrom("0123456789");
            IoVec out = new IoVec(2);
            assertThat(out.addRaw(src.address() + 5, 5)).isTrue();
            assertThat(out.addRaw(src.address(), 5)).isTrue();
            assertThat(out.addRaw(src.address(), 1)).isFalse();
            assertThat(IoVec.writev(p.first(), out)).isEqualTo(10);
            MemorySegment dst = a.allocate(10);
            IoVec in = new IoVec(1);
            in.addRaw(dst.address(), 10);
            assertThat(IoVec.readv(p.second(), in)).isEqualTo(10);
            assertThat(new String(dst.toArray(ValueLayout.JAVA_BYTE), java.nio.charset.StandardCharsets.US_ASCII))
                    .isEqualTo("5678901234");
        }
    }

    @Test
    void fullArrayRefusesAndClearResets() {
        try (Arena a = Arena.ofConfined()) {
            IoVec v = new IoVec(2);
            MemorySegment s = a.allocate(10);
            assertThat(v.add(s)).isTrue();
            assertThat(v.add(s)).isTrue();
            assertThat(v.add(s)).isFalse();
            assertThat(v.count()).isEqualTo(2);
            assertThat(v.totalBytes()).isEqualTo(20);
            v.clear();
            assertThat(v.count()).isZero();
            assertThat(v.totalBytes()).isZero();
        }
    }

    @Test
    void rejectsHeapSegmentsAndOutOfBoundsSlices() {
        try (Arena a = Arena.ofConfined()) {
            IoVec v = new IoVec(2);
            assertThatThrownBy(() -> v.add(MemorySegment.ofArray(new byte[4])))
                    .isInstanceOf(IllegalArgumentException.class);
            MemorySegment s = a.allocate(10);
            assertThatThrownBy(() -> v.add(s, 5, 6)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThatThrownBy(() -> v.add(s, -1, 2)).isInstanceOf(IndexOutOfBoundsException.class);
            assertThat(v.count()).isZero();
            assertThatThrownBy(() -> new IoVec(IoVec.IOV_MAX + 1)).isInstanceOf(IllegalArgumentException.class);
        }
    }

    @Test
    void nonBlockingReadWithNothingReadyIsMinusOne() {
        try (Arena a = Arena.ofConfined(); UnixSocket.Pair p = UnixSocket.pair()) {
            p.second().setNonBlocking(true);
            IoVec v = new IoVec(1);
            v.add(a.allocate(16));
            assertThat(IoVec.readv(p.second(), v)).isEqualTo(-1);
        }
    }
}
