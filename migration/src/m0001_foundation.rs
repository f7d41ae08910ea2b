//! Users, sessions, hosts, enrollment tokens and staged agent binaries.
//! Times are Unix milliseconds (BIGINT) so SQLite and Postgres compare and
//! index them the same way.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    Role,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    TokenHash,
    UserId,
    CreatedAt,
    LastSeenAt,
    ExpiresAt,
    ClientAddr,
}

#[derive(DeriveIden)]
enum Hosts {
    Table,
    Id,
    Name,
    Hostname,
    Os,
    Arch,
    AgentVersion,
    Online,
    LastSeenAt,
    SecretHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EnrollmentTokens {
    Table,
    Id,
    HostId,
    TokenHash,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum AgentBinaries {
    Table,
    Id,
    Os,
    Arch,
    Version,
    Sha256,
    Size,
    FileName,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(big_pk_auto(Users::Id))
                .col(string_uniq(Users::Username))
                .col(string(Users::PasswordHash))
                .col(string(Users::Role))
                .col(big_integer(Users::CreatedAt))
                .col(big_integer(Users::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(big_pk_auto(Sessions::Id))
                .col(string_uniq(Sessions::TokenHash))
                .col(big_integer(Sessions::UserId))
                .col(big_integer(Sessions::CreatedAt))
                .col(big_integer(Sessions::LastSeenAt))
                .col(big_integer(Sessions::ExpiresAt))
                .col(string(Sessions::ClientAddr).default(""))
                .foreign_key(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("sessions_user_id")
                .table(Sessions::Table)
                .col(Sessions::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Hosts::Table)
                .col(big_pk_auto(Hosts::Id))
                .col(string_uniq(Hosts::Name))
                .col(string(Hosts::Hostname).default(""))
                .col(string(Hosts::Os).default(""))
                .col(string(Hosts::Arch).default(""))
                .col(string(Hosts::AgentVersion).default(""))
                .col(boolean(Hosts::Online).default(false))
                .col(big_integer_null(Hosts::LastSeenAt))
                .col(string_null(Hosts::SecretHash).unique_key())
                .col(big_integer(Hosts::CreatedAt))
                .to_owned(),
        )
        .await?;
        // The dashboard pages by name, filtered by online state, and counts
        // hosts behind by agent_version: each has its own index.
        m.create_index(
            Index::create()
                .name("hosts_online_name")
                .table(Hosts::Table)
                .col(Hosts::Online)
                .col(Hosts::Name)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("hosts_agent_version_name")
                .table(Hosts::Table)
                .col(Hosts::AgentVersion)
                .col(Hosts::Name)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(EnrollmentTokens::Table)
                .col(big_pk_auto(EnrollmentTokens::Id))
                .col(big_integer(EnrollmentTokens::HostId))
                .col(string_uniq(EnrollmentTokens::TokenHash))
                .col(big_integer(EnrollmentTokens::CreatedAt))
                .col(big_integer(EnrollmentTokens::ExpiresAt))
                .col(big_integer_null(EnrollmentTokens::UsedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(EnrollmentTokens::Table, EnrollmentTokens::HostId)
                        .to(Hosts::Table, Hosts::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("enrollment_tokens_host_id")
                .table(EnrollmentTokens::Table)
                .col(EnrollmentTokens::HostId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AgentBinaries::Table)
                .col(big_pk_auto(AgentBinaries::Id))
                .col(string(AgentBinaries::Os))
                .col(string(AgentBinaries::Arch))
                .col(string(AgentBinaries::Version))
                .col(string(AgentBinaries::Sha256))
                .col(big_integer(AgentBinaries::Size))
                .col(string(AgentBinaries::FileName))
                .col(big_integer(AgentBinaries::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("agent_binaries_os_arch")
                .table(AgentBinaries::Table)
                .col(AgentBinaries::Os)
                .col(AgentBinaries::Arch)
                .unique()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            AgentBinaries::Table.into_iden(),
            EnrollmentTokens::Table.into_iden(),
            Hosts::Table.into_iden(),
            Sessions::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
