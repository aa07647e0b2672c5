<?php
/**
 * Authenticates a login that a verified assertion already vouched for (no password involved).
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\AuthResult;
use Piwik\Plugins\UsersManager\Model;

class Auth extends \Piwik\Plugins\Login\Auth
{
    /** @var bool */
    private $vouched = false;

    /** Marks the login set with setLogin() as proved by a valid assertion. */
    public function setVouched(bool $vouched): void
    {
        $this->vouched = $vouched;
    }

    public function authenticate()
    {
        if (!$this->vouched || empty($this->login)) {
            return parent::authenticate();
        }
        $model = new Model();
        $user = $model->getUser($this->login);
        if (empty($user)) {
            return new AuthResult(AuthResult::FAILURE, $this->login, null);
        }
        if (empty($this->token_auth)) {
            // Like Matomo's own login: a random token kept in the session.
            $this->token_auth = $model->generateRandomTokenAuth();
        }
        $code = ((int) $user['superuser_access']) ? AuthResult::SUCCESS_SUPERUSER_AUTH_CODE : AuthResult::SUCCESS;
        return new AuthResult($code, $user['login'], $this->token_auth);
    }
}
