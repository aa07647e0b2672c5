<?php
/**
 * Verification of unikgate's login assertions: a compact JWS, HS256 only.
 *
 * Plain PHP, no Matomo dependency, so that it is unit-tested on its own (tests/AssertionTest.php).
 * Claims: iss = "unikgate", aud = Matomo's public base URL (the caller says which: [UnikGate]
 * public_url, else the URL Matomo computes for the request), sub = the Matomo login, iat, exp (at most
 * 60 s after iat; 30 s of clock skew allowed), jti (single use), rd (a relative path).
 */

namespace Piwik\Plugins\UnikGate;

final class AssertionException extends \Exception
{
    /** @var bool true when the token's signature was good: the caller holds the shared secret. */
    public $signed;

    public function __construct(string $message, bool $signed = false)
    {
        parent::__construct($message);
        $this->signed = $signed;
    }
}

final class Assertion
{
    public const ISSUER = 'unikgate';
    public const MAX_LIFETIME = 60;
    public const SKEW = 30;
    public const MIN_SECRET_BYTES = 32;
    public const MAX_TOKEN_BYTES = 4096;

    /** @var string */
    private $secret;
    /** @var string */
    private $audience;

    public function __construct(string $secret, string $audience)
    {
        if (strlen($secret) < self::MIN_SECRET_BYTES) {
            throw new AssertionException('shared secret missing or shorter than 32 bytes: set [UnikGate] shared_secret');
        }
        $this->secret = $secret;
        $this->audience = rtrim($audience, '/') . '/';
    }

    private static function b64decode(string $part): string
    {
        if ($part === '' || preg_match('/^[A-Za-z0-9_-]+$/', $part) !== 1) {
            throw new AssertionException('malformed token');
        }
        $raw = base64_decode(strtr($part, '-_', '+/') . str_repeat('=', (4 - strlen($part) % 4) % 4), true);
        if ($raw === false) {
            throw new AssertionException('malformed token');
        }
        return $raw;
    }

    public static function b64encode(string $raw): string
    {
        return rtrim(strtr(base64_encode($raw), '+/', '-_'), '=');
    }

    /**
     * Verifies a token and returns its claims.
     *
     * @param callable(string $jti, int $exp): bool $remember records a jti until exp; returns
     *        false when it was already recorded (a replay).
     * @return array{sub: string, rd: string, jti: string, exp: int}
     * @throws AssertionException with a one-line reason
     */
    public function verify(string $token, int $now, callable $remember): array
    {
        if (strlen($token) > self::MAX_TOKEN_BYTES) {
            throw new AssertionException('token too long');
        }
        $parts = explode('.', $token);
        if (count($parts) !== 3) {
            throw new AssertionException('malformed token');
        }
        [$h64, $p64, $s64] = $parts;
        $header = json_decode(self::b64decode($h64), true);
        if (!is_array($header) || ($header['alg'] ?? null) !== 'HS256' || ($header['typ'] ?? null) !== 'JWT'
            || count($header) !== 2) {
            throw new AssertionException('unsupported header: only {"alg":"HS256","typ":"JWT"}');
        }
        $expected = hash_hmac('sha256', $h64 . '.' . $p64, $this->secret, true);
        if (!hash_equals($expected, self::b64decode($s64))) {
            throw new AssertionException('bad signature');
        }
        $c = json_decode(self::b64decode($p64), true);
        if (!is_array($c)) {
            throw new AssertionException('malformed claims', true);
        }
        foreach (['iss', 'aud', 'sub', 'jti', 'rd'] as $k) {
            if (!isset($c[$k]) || !is_string($c[$k]) || $c[$k] === '') {
                throw new AssertionException("missing claim $k", true);
            }
        }
        foreach (['iat', 'exp'] as $k) {
            if (!isset($c[$k]) || !is_int($c[$k])) {
                throw new AssertionException("missing claim $k", true);
            }
        }
        if ($c['iss'] !== self::ISSUER) {
            throw new AssertionException('wrong issuer', true);
        }
        if (rtrim($c['aud'], '/') . '/' !== $this->audience) {
            // Only a holder of the secret gets here; naming both tells the operator what differs.
            throw new AssertionException(
                'wrong audience: the assertion is for ' . rtrim($c['aud'], '/') . '/, this Matomo is ' . $this->audience,
                true
            );
        }
        if ($c['exp'] <= $c['iat'] || $c['exp'] - $c['iat'] > self::MAX_LIFETIME) {
            throw new AssertionException('lifetime longer than 60 s', true);
        }
        if ($c['iat'] > $now + self::SKEW) {
            throw new AssertionException("not yet valid (server time $now)", true);
        }
        if ($c['exp'] + self::SKEW <= $now) {
            throw new AssertionException("expired (server time $now)", true);
        }
        if (preg_match('/^[A-Za-z0-9_.@+\-ÄäÖöÜüß]{1,100}$/u', $c['sub']) !== 1) {
            throw new AssertionException('sub is not a Matomo login', true);
        }
        $rd = $c['rd'];
        if ($rd[0] !== '/' || (strlen($rd) > 1 && ($rd[1] === '/' || $rd[1] === '\\'))
            || preg_match('/[\\\\\s\x00-\x1f\x7f]/', $rd) === 1) {
            throw new AssertionException('rd is not a relative path', true);
        }
        if (preg_match('/^[A-Za-z0-9_-]{16,128}$/', $c['jti']) !== 1) {
            throw new AssertionException('malformed jti', true);
        }
        if (!$remember($c['jti'], $c['exp'] + self::SKEW)) {
            throw new AssertionException('replayed assertion', true);
        }
        return ['sub' => $c['sub'], 'rd' => $rd, 'jti' => $c['jti'], 'exp' => $c['exp']];
    }
}
