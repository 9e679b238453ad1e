package io.mqvirtio.memory;

/** An address or range that the peer gave us does not lie inside the memory it shared. */
public final class GuestMemoryException extends RuntimeException {
    public GuestMemoryException(String message) {
        super(message);
    }
}
