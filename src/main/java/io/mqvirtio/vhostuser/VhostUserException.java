package io.mqvirtio.vhostuser;

/** A vhost-user peer sent something the protocol does not allow, or a request could not be carried out (not final: {@link Channel.Stalled} says a peer ran out of time). */
public class VhostUserException extends RuntimeException {
    public VhostUserException(String message) {
        super(message);
    }

    public VhostUserException(String message, Throwable cause) {
        super(message, cause);
    }
}
