<?php
/**
 * Administration → System → "Unikname", for superusers only: the page of @unikname links and
 * unikgate sessions (Controller::admin, templates/admin.twig). System holds Matomo's own pages
 * about every account (General settings, Users), which is what this page is about.
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Menu\MenuAdmin;
use Piwik\Piwik;

class Menu extends \Piwik\Plugin\Menu
{
    public function configureAdminMenu(MenuAdmin $menu)
    {
        if (Piwik::hasUserSuperUserAccess()) {
            // Right after Users (15) and Anonymous user (16).
            $menu->addSystemItem('UnikGate_AdminMenu', $this->urlForAction('admin'), 17);
        }
    }
}
