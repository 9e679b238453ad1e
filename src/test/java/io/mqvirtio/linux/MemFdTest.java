package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.ValueLayout;
import org.junit.jupiter.api.Test;

class MemFdTest {
    @Test
    void aSizeSealedFileCannotBeTruncatedByAnyoneItIsSharedWith() throws Exception {
        try (MemFd m = MemFd.create("mqvirtio-test", 1 << 16); Mmap map = Mmap.shared(m, 0, 1 << 16)) {
            assertThat(m.seals()).as("no seals yet").isZero();
            m.truncate(1 << 17); // unsealed: the owner may still resize it
            m.truncate(1 << 16);
            m.sealSize();
            assertThat(m.seals()).isEqualTo(MemFd.F_SEAL_SHRINK | MemFd.F_SEAL_GROW | MemFd.F_SEAL_SEAL);
            assertThatThrownBy(() -> m.truncate(4096)).isInstanceOf(ErrnoException.class).hasMessageContaining("ftruncate");
            // another open of the same file, as a peer that received the fd would hold
            String path = "/proc/self/fd/" + m.fd();
            try (RandomAccessFile peer = new RandomAccessFile(path, "rw")) {
                assertThatThrownBy(() -> peer.setLength(0)).isInstanceOf(IOException.class);
                assertThatThrownBy(() -> peer.setLength(1 << 20)).isInstanceOf(IOException.class);
                assertThat(peer.length()).isEqualTo(1 << 16);
                peer.seek(100);
                peer.write(42); // writing is still allowed: only the size is sealed
            }
            assertThat(map.segment().get(ValueLayout.JAVA_BYTE, 100)).isEqualTo((byte) 42);
            assertThat(map.segment().get(ValueLayout.JAVA_BYTE, (1 << 16) - 1)).isZero();
        }
    }
}
